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
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
    ],
    targets: [
        // PCRE2 is the regular-expression engine HTCondor itself uses, so regexp() & co. agree with it exactly.
        .systemLibrary(
            name: "CPCRE2", path: "Sources/CPCRE2", pkgConfig: "libpcre2-8",
            providers: [.apt(["libpcre2-dev"])]),
        // LZ4 blocks: LZ4 initramfs archives, and unpacking a bzImage's payload for direct (PVH) boot.
        .systemLibrary(
            name: "CLZ4", path: "Sources/CLZ4", pkgConfig: "liblz4",
            providers: [.apt(["liblz4-dev"])]),
        // fork+exec with per-child setup, thread affinity, rdtsc.
        .target(name: "CLinux"),
        // The ClassAd language (HTCondor "new ClassAd" semantics) and the matchmaker.
        .target(name: "ClassAd", dependencies: ["CPCRE2"]),
        // Image records and their ads, the SQLite store, content-addressed blobs, the job ad of a request.
        .target(
            name: "Catalog",
            dependencies: [
                "ClassAd",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Crypto", package: "swift-crypto"),
            ]),
        // Builds guest images from recipes (Images/*.toml): Debian packages, the agent, an initramfs.
        .target(
            name: "ImageBuilder",
            dependencies: ["Catalog", "CLZ4", "CLinux", .product(name: "TOMLKit", package: "TOMLKit")],
            path: "Images/Builder"),
        // Boots guests: the Hypervisor protocol, the QEMU backend (QMP), CPU pinning, the agent client.
        .target(name: "Runner", dependencies: ["Catalog", "CLZ4", "CLinux"]),
        .executableTarget(
            name: "slurm-vm",
            dependencies: [
                "ClassAd", "Catalog", "ImageBuilder", "Runner",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),
        .testTarget(name: "ClassAdTests", dependencies: ["ClassAd"]),
        .testTarget(name: "CatalogTests", dependencies: ["Catalog", "ClassAd"]),
        .testTarget(name: "ImageBuilderTests", dependencies: ["ImageBuilder", "Catalog", "Runner"]),
        .testTarget(name: "RunnerTests", dependencies: ["Runner", "Catalog", .product(name: "Crypto", package: "swift-crypto")]),
        // End to end through the built `slurm-vm` binary: builds the minimal image and boots real guests.
        .testTarget(name: "GuestTests", dependencies: ["Catalog"]),
    ],
    swiftLanguageModes: [.v6]
)
