// swift-tools-version:6.0
// libFuzzer targets for Switchboard's decoders. Built only by Fuzz/run.sh with -sanitize=fuzzer
// (the entry point comes from libFuzzer, so these are not part of the main package's build).
import Foundation
import PackageDescription

// A path dependency's identity is its folder's name, which differs between checkouts.
let switchboard = URL(fileURLWithPath: #filePath).deletingLastPathComponent().deletingLastPathComponent().lastPathComponent

let package = Package(
    name: "SwitchboardFuzz",
    dependencies: [.package(path: "..")],
    targets: [
        .target(name: "CLibFuzzer"),
        .executableTarget(
            name: "FuzzNIP44",
            dependencies: ["CLibFuzzer", .product(name: "NostrCrypto", package: switchboard)]
        ),
        .executableTarget(
            name: "FuzzMessages",
            dependencies: [
                "CLibFuzzer",
                .product(name: "NostrCore", package: switchboard),
                .product(name: "NostrCrypto", package: switchboard),
            ]
        ),
        .executableTarget(
            name: "FuzzRelaySession",
            dependencies: [
                "CLibFuzzer",
                .product(name: "NostrCore", package: switchboard),
                .product(name: "NostrRelay", package: switchboard),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
