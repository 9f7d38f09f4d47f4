// swift-tools-version:6.0
import PackageDescription

// The daemons (and the benchmark, which runs the embedded relay) allocate through jemalloc (Debian's
// libjemalloc-dev): glibc's malloc was ~6 % of their CPU under load, and with jemalloc the service runtime's
// CPU per request fell ~7 % (Docs/benchmarks.md).
let jemalloc: [LinkerSetting] = [.linkedLibrary("jemalloc", .when(platforms: [.linux]))]

let package = Package(
    name: "Switchboard",
    platforms: [.macOS(.v15)],
    products: [
        .library(name: "NostrCrypto", targets: ["NostrCrypto"]),
        .library(name: "NostrCore", targets: ["NostrCore"]),
        .library(name: "NostrRelay", targets: ["NostrRelay"]),
        .library(name: "NostrService", targets: ["NostrService"]),
        .library(name: "NostrServicePostgres", targets: ["NostrServicePostgres"]),
        .library(name: "NostrServiceTesting", targets: ["NostrServiceTesting"]),
        .executable(name: "switchboard", targets: ["switchboard"]),
        .executable(name: "switchboard-bench", targets: ["switchboard-bench"]),
        .executable(name: "bunker", targets: ["bunker"]),
        .library(name: "BunkerKit", targets: ["BunkerKit"]),
        .library(name: "WalletKit", targets: ["WalletKit"]),
        .library(name: "WalletKitPostgres", targets: ["WalletKitPostgres"]),
        .executable(name: "wallet-bridge", targets: ["wallet-bridge"]),
        .library(name: "DVMKit", targets: ["DVMKit"]),
        .executable(name: "dvm-host", targets: ["dvm-host"]),
    ],
    dependencies: [
        .package(url: "https://github.com/apple/swift-argument-parser", from: "1.5.0"),
        .package(url: "https://github.com/apple/swift-log", from: "1.6.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird", from: "2.24.0"),
        .package(url: "https://github.com/hummingbird-project/hummingbird-websocket", from: "2.8.0"),
        .package(url: "https://github.com/swift-server/swift-service-lifecycle", from: "2.13.0"),
        .package(url: "https://github.com/groue/GRDB.swift", from: "7.0.0"),
        .package(url: "https://github.com/hummingbird-project/swift-websocket", from: "1.6.0"),
        .package(url: "https://github.com/apple/swift-metrics", from: "2.5.0"),
        .package(url: "https://github.com/apple/swift-nio-ssl", from: "2.29.0"),
        .package(url: "https://github.com/swift-server/swift-prometheus", from: "2.1.0"),
        .package(url: "https://github.com/vapor/postgres-nio", from: "1.33.0"),
        .package(url: "https://github.com/HdrHistogram/hdrhistogram-swift", from: "0.2.0"),
        .package(url: "https://github.com/swift-server/async-http-client", from: "1.24.0"),
        .package(url: "https://github.com/apple/swift-nio", from: "2.80.0"),
        .package(url: "https://github.com/apple/swift-subprocess", from: "1.0.0"),
    ],
    targets: [
        // The three C libraries, as Debian packages them. Only NostrCrypto imports these
        // (and switchboard-bench, which calls them directly as its baseline).
        .systemLibrary(
            name: "CSecp256k1",
            pkgConfig: "libsecp256k1",
            providers: [.apt(["libsecp256k1-dev"])]
        ),
        .systemLibrary(
            name: "CSodium",
            pkgConfig: "libsodium",
            providers: [.apt(["libsodium-dev"])]
        ),
        .systemLibrary(
            name: "COpenSSL",
            pkgConfig: "openssl",
            providers: [.apt(["libssl-dev"])]
        ),
        .target(
            name: "NostrCrypto",
            dependencies: ["CSecp256k1", "CSodium", "COpenSSL"]
        ),
        .target(
            name: "NostrCore",
            dependencies: ["NostrCrypto"]
        ),
        .target(
            name: "NostrRelay",
            dependencies: [
                "NostrCore",
                "NostrCrypto",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdCore", package: "hummingbird"),
                .product(name: "HummingbirdWebSocket", package: "hummingbird-websocket"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "WSClient", package: "swift-websocket"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "NIOSSL", package: "swift-nio-ssl"),
                .product(name: "NIOPosix", package: "swift-nio"),
            ]
        ),
        .target(
            name: "NostrService",
            dependencies: [
                "NostrCore",
                "NostrCrypto",
                "NostrRelay",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        // The PostgreSQL store is its own module, so services that only use SQLite do not build postgres-nio.
        .target(
            name: "NostrServicePostgres",
            dependencies: [
                "NostrService", "NostrCore", "NostrCrypto",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ]
        ),
        // bunker: the NIP-46 remote signer (BunkerKit is its library, tested on its own; `bunker` the daemon).
        .target(
            name: "BunkerKit",
            dependencies: [
                "NostrService", "NostrRelay", "NostrCore", "NostrCrypto",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Hummingbird", package: "hummingbird"),
            ]
        ),
        .executableTarget(
            name: "bunker",
            dependencies: [
                "BunkerKit", "NostrService", "NostrRelay", "NostrCore", "NostrCrypto",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            linkerSettings: jemalloc
        ),
        // wallet-bridge: the NIP-47 wallet service (WalletKit is its library: BOLT11, the wallet store, the
        // backends, the request handler).
        .target(
            name: "WalletKit",
            dependencies: [
                "NostrService", "NostrRelay", "NostrCore", "NostrCrypto",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOHTTP1", package: "swift-nio"),
            ]
        ),
        .target(
            name: "WalletKitPostgres",
            dependencies: [
                "WalletKit", "NostrServicePostgres", "NostrRelay", "NostrCore", "NostrCrypto",
                .product(name: "PostgresNIO", package: "postgres-nio"),
                .product(name: "Logging", package: "swift-log"),
            ]
        ),
        .executableTarget(
            name: "wallet-bridge",
            dependencies: [
                "WalletKit", "WalletKitPostgres", "NostrService", "NostrServicePostgres", "NostrRelay", "NostrCore", "NostrCrypto",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            linkerSettings: jemalloc
        ),
        // dvm-host: the NIP-90 job host (DVMKit is its library: job requests, the JobHandler API, inputs,
        // pricing through a NIP-47 wallet, the request handler; `dvm-host` the daemon).
        .target(
            name: "DVMKit",
            dependencies: [
                "WalletKit", "NostrService", "NostrRelay", "NostrCore", "NostrCrypto",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "AsyncHTTPClient", package: "async-http-client"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOPosix", package: "swift-nio"),
                .product(name: "Subprocess", package: "swift-subprocess"),
            ]
        ),
        .executableTarget(
            name: "dvm-host",
            dependencies: [
                "DVMKit", "DVMExamples", "WalletKit", "NostrService", "NostrServicePostgres", "NostrRelay", "NostrCore", "NostrCrypto",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            linkerSettings: jemalloc
        ),
        .target(
            name: "NostrServiceTesting",
            dependencies: [
                "NostrService", "NostrServicePostgres", "NostrRelay", "NostrCore", "NostrCrypto",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
            ]
        ),
        .executableTarget(
            name: "switchboard",
            dependencies: [
                "BunkerKit", "WalletKit", "DVMKit",
                "NostrCore",
                "NostrCrypto",
                "NostrRelay",
                .product(name: "ArgumentParser", package: "swift-argument-parser"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            linkerSettings: jemalloc
        ),
        // Examples, built with everything else (so CI builds them).
        .executableTarget(
            name: "uppercase-service",
            dependencies: [
                "NostrService", "NostrRelay", "NostrCore", "NostrCrypto",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Metrics", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
            ],
            path: "Examples/UppercaseService",
            linkerSettings: jemalloc
        ),
        .executableTarget(
            name: "uppercase-client",
            dependencies: ["NostrRelay", "NostrCore", "NostrCrypto", .product(name: "Logging", package: "swift-log")],
            path: "Examples/UppercaseClient"
        ),
        // Job handlers written against DVMKit's JobHandler API; dvm-host offers them through --handler.
        .target(
            name: "DVMExamples",
            dependencies: ["DVMKit", "NostrCrypto"],
            path: "Examples/DVMHandlers"
        ),
        .executableTarget(
            name: "switchboard-bench",
            dependencies: [
                "BunkerKit", "WalletKit", "DVMKit", "NostrService", "NostrCore", "NostrCrypto", "NostrRelay", "CSecp256k1", "CSodium", "COpenSSL",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "WSClient", package: "swift-websocket"),
                .product(name: "Histogram", package: "hdrhistogram-swift"),
            ],
            linkerSettings: jemalloc
        ),
        .testTarget(
            name: "NostrCryptoTests",
            dependencies: ["NostrCrypto"],
            resources: [.copy("Vectors")]
        ),
        .testTarget(
            name: "NostrCoreTests",
            dependencies: ["NostrCore", "NostrCrypto"]
        ),
        .testTarget(
            name: "NostrRelayTests",
            dependencies: [
                "NostrRelay", "NostrCore", "NostrCrypto", "NostrServiceTesting",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
                .product(name: "WSClient", package: "swift-websocket"),
                .product(name: "NIOCore", package: "swift-nio"),
                .product(name: "NIOEmbedded", package: "swift-nio"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdWebSocket", package: "hummingbird-websocket"),
            ]
        ),
        .testTarget(
            name: "BunkerKitTests",
            dependencies: [
                "BunkerKit", "NostrService", "NostrServiceTesting", "NostrRelay", "NostrCore", "NostrCrypto",
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
                .product(name: "Prometheus", package: "swift-prometheus"),
            ]
        ),
        .testTarget(
            name: "WalletKitTests",
            dependencies: [
                "WalletKit", "WalletKitPostgres", "NostrService", "NostrServicePostgres", "NostrServiceTesting", "NostrRelay",
                "NostrCore", "NostrCrypto",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
                .product(name: "PostgresNIO", package: "postgres-nio"),
            ]
        ),
        .testTarget(
            name: "DVMKitTests",
            dependencies: [
                "DVMKit", "DVMExamples", "WalletKit", "NostrService", "NostrServicePostgres", "NostrServiceTesting", "NostrRelay",
                "NostrCore", "NostrCrypto",
                .product(name: "Logging", package: "swift-log"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "ServiceLifecycleTestKit", package: "swift-service-lifecycle"),
            ]
        ),
        .testTarget(
            name: "NostrServiceTests",
            dependencies: [
                "NostrService", "NostrServicePostgres", "NostrServiceTesting", "NostrRelay", "NostrCore", "NostrCrypto",
                .product(name: "GRDB", package: "GRDB.swift"),
                .product(name: "Hummingbird", package: "hummingbird"),
                .product(name: "HummingbirdWebSocket", package: "hummingbird-websocket"),
                .product(name: "Logging", package: "swift-log"),
                .product(name: "MetricsTestKit", package: "swift-metrics"),
                .product(name: "ServiceLifecycle", package: "swift-service-lifecycle"),
                .product(name: "ServiceLifecycleTestKit", package: "swift-service-lifecycle"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
