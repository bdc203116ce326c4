// swift-tools-version:6.0
// slurm-vm: VM-on-demand jobs for Slurm. See README.md for the layout of the package.
import PackageDescription

let package = Package(
    name: "slurm-vm",
    products: [
        .library(name: "ClassAd", targets: ["ClassAd"]),
        .executable(name: "slurm-vm", targets: ["slurm-vm"]),
        .executable(name: "slurm-vmd", targets: ["slurm-vmd"]),
        .executable(name: "slurm-vm-vmm", targets: ["slurm-vm-vmm"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.10.0"),
        .package(url: "https://github.com/apple/swift-crypto", from: "3.12.3"),
        .package(url: "https://github.com/LebJe/TOMLKit", from: "0.6.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.6.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.0.0"),
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
        // SHA-256 whose chaining value can be read out and resumed (SHA-NI when present): chunk checks that
        // chain into the image's digest, so each byte is hashed once.
        .target(name: "CSHA256"),
        // <linux/kvm.h> for Swift: the ioctls as functions, flat views of kvm_run's unions.
        .target(name: "CKVM"),
        // The embedded VMM: architecture (boot protocol, GDT, page tables, MP table, CPUID, MSRs), VM state
        // (KVM, VM, vCPU, guest memory) and devices, assembled by Machine. No Foundation: its RSS budget
        // beyond guest RAM is a few MiB.
        .target(name: "VMM", dependencies: ["CKVM", "CLinux"]),
        // A static executable (Swift runtime and libc inside, no dynamic loader): the process maps only
        // what it touches (RSS budget) and runs on any node without matching shared libraries. lld lays out
        // the functions and data a VM touches first (link-order.txt, from scripts/vmm_link_order.py), so the
        // kernel's 64 KiB fault-around maps a few dense windows rather than one per scattered function.
        .executableTarget(
            name: "slurm-vm-vmm", dependencies: ["VMM", "Sizes", "CLinux"], exclude: ["link-order.txt"],
            linkerSettings: [
                .unsafeFlags([
                    "-static-executable", "-use-ld=lld",
                    "-Xlinker", "--symbol-ordering-file=\(Context.packageDirectory)/Sources/slurm-vm-vmm/link-order.txt",
                    "-Xlinker", "--no-warn-symbol-ordering",
                ])
            ]),
        // Sizes as users and admins write them (512M, 2G): one parser for every front end. No Foundation,
        // so the static VMM can use it.
        .target(name: "Sizes"),
        // Files as every on-disk structure uses them: atomic writes (temp + fsync + rename), hashing, locks.
        .target(name: "Support", dependencies: [.product(name: "Crypto", package: "swift-crypto")]),
        // A job's private network across its nodes: the plan (names, VNI, addresses, MTU) and iproute2's
        // bridge, VXLAN and taps.
        .target(name: "Network", dependencies: ["Support"]),
        // The ClassAd language (HTCondor "new ClassAd" semantics) and the matchmaker.
        .target(name: "ClassAd", dependencies: ["CPCRE2"]),
        // Image records and their ads, the SQLite store, content-addressed blobs, the job ad of a request.
        .target(
            name: "Catalog",
            dependencies: [
                "ClassAd", "Sizes", "Support",
                .product(name: "GRDB", package: "GRDB.swift"),
            ]),
        // TOML read strictly (unknown keys are errors): recipes and the daemon's configuration.
        .target(name: "StrictTOML", dependencies: [.product(name: "TOMLKit", package: "TOMLKit")]),
        // Builds guest images from recipes (Images/*.toml): Debian packages, the agent, an initramfs.
        .target(
            name: "ImageBuilder",
            dependencies: ["Catalog", "Support", "CLZ4", "StrictTOML", .product(name: "TOMLKit", package: "TOMLKit")],
            path: "Images/Builder"),
        // Boots guests: the Hypervisor protocol, the QEMU backend (QMP), CPU pinning, the agent client.
        .target(name: "Runner", dependencies: ["Support", "CLZ4", "CLinux"]),
        // A node's share of a job's guests: core placement, per-job guest sets booted in the prolog and torn
        // down in the epilog, tasks run in them, state on disk and its recovery after a restart.
        .target(
            name: "Node",
            dependencies: [
                "Catalog", "Support", "Sizes", "Runner", "Broadcast", "Network", "Telemetry", .product(name: "NIOPosix", package: "swift-nio"),
            ]),
        // What slurm-vmd counts and measures, in one Prometheus registry (its endpoint is the Daemon's).
        .target(name: "Telemetry", dependencies: [.product(name: "Prometheus", package: "swift-prometheus")]),
        // Images to many nodes at link speed: the binomial pipeline plan, chunk verification, the transfer
        // state machine and its SwiftNIO driver, the coordinator that plans and coalesces transfers.
        .target(
            name: "Broadcast",
            dependencies: [
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                "CSHA256",
            ]),
        // The curve past one machine: real TransferMachines on a simulated network of TCP connections,
        // calibrated against the namespace testbed.
        .target(name: "BroadcastSimulator", dependencies: ["Broadcast"]),
        // slurm-vmd's pieces: configuration, the Unix-socket API (JSON lines, SO_PEERCRED), the catalog
        // role (matching, blobs over TCP) and the node role (Node) behind it.
        .target(
            name: "Daemon",
            dependencies: [
                "Catalog", "ClassAd", "Node", "Runner", "CLinux", "StrictTOML", "Broadcast", "Sizes", "Support", "Network", "Telemetry",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]),
        .executableTarget(
            name: "slurm-vmd",
            dependencies: [
                "Daemon", "Node", "Support", "Telemetry",
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),
        .executableTarget(
            name: "slurm-vm",
            dependencies: [
                "ClassAd", "Catalog", "Daemon", "ImageBuilder", "Runner", "Broadcast", "BroadcastSimulator", "Node", "Sizes", "Support", "Network",
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ]),
        .testTarget(name: "ClassAdTests", dependencies: ["ClassAd", "Support"]),
        .testTarget(name: "CatalogTests", dependencies: ["Catalog", "ClassAd", "Sizes", "Support"]),
        .testTarget(name: "ImageBuilderTests", dependencies: ["ImageBuilder", "Runner"]),
        .testTarget(name: "RunnerTests", dependencies: ["Runner", .product(name: "Crypto", package: "swift-crypto")]),
        // End to end through the built `slurm-vm` binary: builds the minimal image and boots real guests.
        .testTarget(name: "GuestTests", dependencies: ["Catalog"]),
        .testTarget(
            name: "BroadcastTests",
            dependencies: [
                "Broadcast", "CSHA256", "Support", .product(name: "Crypto", package: "swift-crypto"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "NIOCore", package: "swift-nio"),
            ]),
        .testTarget(name: "BroadcastSimulatorTests", dependencies: ["BroadcastSimulator", "Broadcast"]),
        .testTarget(name: "VMMTests", dependencies: ["VMM", "CLinux", "Runner", "Support"], exclude: ["Guests"]),
        .testTarget(name: "NetworkTests", dependencies: ["Network"]),
        .testTarget(
            name: "NodeTests",
            dependencies: [
                "Node", "Daemon", "Runner", "Catalog", "Support", "Network", "Telemetry", .product(name: "Logging", package: "swift-log"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]),
    ],
    swiftLanguageModes: [.v6]
)
