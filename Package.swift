// swift-tools-version:6.1
import PackageDescription

let strict: [SwiftSetting] = [.swiftLanguageMode(.v6)]

// A static executable built against the shared toolchain modules (any build without
// --static-swift-stdlib) is told only to link Foundation; the static Foundation needs these too,
// each after what uses it (the driver's own link group cannot be extended from here).
let staticFoundation = ["-lFoundation", "-lFoundationInternationalization", "-lFoundationEssentials", "-lCoreFoundation",
                        "-l_FoundationICU", "-lFoundationEssentials", "-l_FoundationCShims", "-l_FoundationCollections",
                        "-lswiftSynchronization", "-ldispatch", "-lBlocksRuntime", "-lstdc++", "-lm"]

let package = Package(
    name: "Ferry",
    platforms: [.macOS(.v15)],
    products: [
        .executable(name: "ferry", targets: ["ferry"]),
        .executable(name: "ferry-engine", targets: ["ferry-engine"]),
        .library(name: "FerryCopy", targets: ["FerryCopy"]),
        .library(name: "FerryStorage", targets: ["FerryStorage"]),
        .library(name: "FerrySystem", targets: ["FerrySystem"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-system.git", from: "1.8.1"),
        .package(url: "https://github.com/apple/swift-argument-parser.git", from: "1.8.2"),
        .package(url: "https://github.com/apple/swift-crypto.git", from: "3.12.3"),
        .package(url: "https://github.com/groue/GRDB.swift.git", from: "7.10.0"),
        .package(url: "https://github.com/vapor/postgres-nio.git", from: "1.33.2"),
        .package(url: "https://github.com/hummingbird-project/hummingbird.git", from: "2.28.1"),
        .package(url: "https://github.com/hummingbird-project/swift-mustache.git", from: "2.1.1"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle.git", from: "2.13.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus.git", from: "2.4.1"),
        .package(url: "https://github.com/apple/swift-log.git", from: "1.16.2"),
        .package(url: "https://github.com/apple/swift-metrics.git", from: "2.13.0"),
        .package(url: "https://github.com/apple/swift-http-types.git", from: "1.8.0"),
        .package(url: "https://github.com/apple/swift-nio.git", from: "2.101.2"),
    ],
    targets: [
        // One plain C function per thing Swift cannot import (variadic ioctl, renameat2, statx,
        // copy_file_range, openat2, struct fsxattr): compiled with _GNU_SOURCE in shim.c.
        .target(name: "CFerrySystem"),
        .target(
            name: "FerrySystem",
            dependencies: ["CFerrySystem", .product(name: "SystemPackage", package: "swift-system")],
            swiftSettings: strict),
        .target(
            name: "FerryCopy",
            dependencies: ["FerrySystem", .product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: strict),
        .target(name: "FerryStorage", dependencies: ["FerrySystem"], swiftSettings: strict),
        // The durable task store: SQLite (GRDB) embedded; PostgreSQL for many workers.
        .target(
            name: "FerryJobs",
            dependencies: [
                "FerrySystem", .product(name: "GRDB", package: "GRDB.swift"), .product(name: "GRDBSQLite", package: "GRDB.swift"),
            ],
            swiftSettings: strict),
        // The PostgreSQL task store, apart: the `ferry` front end links FerryJobs and must not carry
        // NIO and the PostgreSQL client into every same-project move's start-up.
        .target(
            name: "FerryJobsPostgres",
            dependencies: ["FerryJobs", .product(name: "PostgresNIO", package: "postgres-nio")],
            swiftSettings: strict),
        // The staged-commit move engine, workers and janitor.
        .target(name: "FerryMove", dependencies: ["FerryJobs", "FerryStorage", "FerryCopy", "FerrySystem"], swiftSettings: strict),
        // The configuration file (TOML, read by our own strict parser: TOMLKit's dependencies are not
        // available to this project).
        .target(name: "FerryConfig", dependencies: ["FerryStorage", "FerrySystem"], swiftSettings: strict),
        // libpam, for `ferry serve` with auth = "pam": one C function around the PAM conversation.
        .target(name: "CFerryPAM", linkerSettings: [.linkedLibrary("pam")]),
        // `ferry serve`: the REST API, the web UI, authentication and the per-user task runners.
        .target(
            name: "FerryServer",
            dependencies: [
                "FerryConfig", "FerryCopy", "FerryJobs", "FerryMove", "FerryStorage", "FerrySystem", "CFerryPAM",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Mustache", package: "swift-mustache"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "HTTPTypes", package: "swift-http-types"),
                .product(name: "NIOCore", package: "swift-nio"),
            ],
            resources: [.copy("Web")],
            swiftSettings: strict),
        .target(
            name: "FerryCLI",
            dependencies: [
                "FerryConfig", "FerryCopy", "FerryJobs", "FerryJobsPostgres", "FerryMove", "FerryServer", "FerryStorage", "FerrySystem",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
            ],
            swiftSettings: strict),
        // `ferry`: a small static front end that makes a same-project move itself and hands every
        // other command to `ferry-engine` by exec (see Sources/ferry/main.swift). Statically
        // linked, because loading the shared libraries alone costs more than `mv` takes. Nothing
        // may depend on it: its linker flag would be applied to whatever links it.
        .executableTarget(
            name: "ferry", dependencies: ["FerryConfig", "FerryJobs", "FerryMove", "FerrySystem"], swiftSettings: strict,
            linkerSettings: [.unsafeFlags(["-static-executable"] + staticFoundation)]),
        // Every command: the CLI, the worker, the janitor and the server.
        .executableTarget(name: "ferry-engine", dependencies: ["FerryCLI"], swiftSettings: strict),
        // Benchmarks/move-bench.sh: task claims per second against SQLite and PostgreSQL.
        .executableTarget(name: "ferry-claim-bench", dependencies: ["FerryJobs", "FerryJobsPostgres"], path: "Benchmarks/ClaimBench", swiftSettings: strict),
        .target(
            name: "FerryTestSupport",
            dependencies: ["FerrySystem", .product(name: "Crypto", package: "swift-crypto")],
            swiftSettings: strict),
        .testTarget(name: "FerrySystemTests", dependencies: ["FerrySystem", "FerryTestSupport"], swiftSettings: strict),
        .testTarget(name: "FerryJobsTests", dependencies: ["FerryJobs", "FerryJobsPostgres", "FerryTestSupport", .product(name: "GRDB", package: "GRDB.swift")], swiftSettings: strict),
        .testTarget(
            name: "FerryMoveTests", dependencies: ["FerryMove", "FerryStorage", "FerryTestSupport", "ferry-engine"],
            resources: [.copy("Fixtures")], swiftSettings: strict),
        .testTarget(name: "FerryConfigTests", dependencies: ["FerryConfig"], swiftSettings: strict),
        .testTarget(name: "FerryCopyTests", dependencies: ["FerryCopy", "FerryTestSupport"], swiftSettings: strict),
        .testTarget(
            name: "FerryStorageTests", dependencies: ["FerryStorage", "FerryTestSupport"],
            resources: [.copy("Fixtures")], swiftSettings: strict),
        .testTarget(name: "FerryServerTests", dependencies: ["FerryServer", "FerryTestSupport", "ferry-engine"], swiftSettings: strict),
        .testTarget(
            name: "FerryCLITests", dependencies: ["FerryCLI", "FerryTestSupport", "ferry-engine"],
            resources: [.copy("Fixtures")], swiftSettings: strict),
    ]
)
