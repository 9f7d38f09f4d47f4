import ArgumentParser
import NostrCrypto

struct KeyCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "key", abstract: "Generate and inspect keys.", subcommands: [Generate.self, Public.self])

    struct Generate: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Generate a secret key from the system CSPRNG and print it in hex and bech32 with its public key.")

        func run() throws {
            let key = SecretKey.generate()
            IO.writeLine("secret-hex: \(key.exportHex())")
            IO.writeLine("nsec: \(key.exportNsec())")
            IO.writeLine("public-hex: \(key.publicKey.hex)")
            IO.writeLine("npub: \(key.publicKey.npub)")
        }
    }

    struct Public: ParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print the public key (hex and npub) of a secret key.")
        @OptionGroup var secret: SecretKeyOption

        func run() throws {
            try reportingErrors {
                let key = try secret.load()
                IO.writeLine("public-hex: \(key.publicKey.hex)")
                IO.writeLine("npub: \(key.publicKey.npub)")
            }
        }
    }
}
