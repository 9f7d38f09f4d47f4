// swift-tools-version:6.0
// libFuzzer targets for Switchboard's decoders. Built only by Fuzz/run.sh with -sanitize=fuzzer
// (the entry point comes from libFuzzer, so these are not part of the main package's build).
import PackageDescription

let package = Package(
    name: "SwitchboardFuzz",
    dependencies: [.package(path: "..")],
    targets: [
        .target(name: "CLibFuzzer"),
        .executableTarget(
            name: "FuzzNIP44",
            dependencies: ["CLibFuzzer", .product(name: "NostrCrypto", package: "main")]
        ),
        .executableTarget(
            name: "FuzzMessages",
            dependencies: [
                "CLibFuzzer",
                .product(name: "NostrCore", package: "main"),
                .product(name: "NostrCrypto", package: "main"),
            ]
        ),
    ],
    swiftLanguageModes: [.v6]
)
