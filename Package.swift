// swift-tools-version:6.0
// slurm-vm: VM-on-demand jobs for Slurm. See README.md for the layout of the package.
import PackageDescription

let package = Package(
    name: "slurm-vm",
    products: [
        .library(name: "ClassAd", targets: ["ClassAd"]),
        .executable(name: "slurm-vm", targets: ["slurm-vm"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
    ],
    targets: [
        // PCRE2 is the regular-expression engine HTCondor itself uses, so regexp() & co. agree with it exactly.
        .systemLibrary(
            name: "CPCRE2", path: "Sources/CPCRE2", pkgConfig: "libpcre2-8",
            providers: [.apt(["libpcre2-dev"])]),
        // The ClassAd language (HTCondor "new ClassAd" semantics) and the matchmaker.
        .target(name: "ClassAd", dependencies: ["CPCRE2"]),
        .executableTarget(
            name: "slurm-vm",
            dependencies: ["ClassAd", .product(name: "ArgumentParser", package: "swift-argument-parser")]),
        .testTarget(name: "ClassAdTests", dependencies: ["ClassAd"]),
    ],
    swiftLanguageModes: [.v6]
)
