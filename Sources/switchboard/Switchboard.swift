import ArgumentParser
import BunkerKit
import Foundation
import NostrCore
import NostrCrypto

@main
struct Switchboard: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "switchboard",
        abstract: "Keys, events, encryption and NIP-19 for Nostr — the developer and operator tool of Switchboard.",
        subcommands: [
            KeyCommand.self, EventCommand.self, Encrypt.self, Decrypt.self, Encode.self, Decode.self, RelayCommand.self,
            PublishCommand.self, SubscribeCommand.self, NIP46Command.self, NWCCommand.self, BOLT11Command.self, DVMCommand.self,
        ]
    )
}

/// A failure the command reports on stderr with exit code 1.
struct CommandFailure: Error, CustomStringConvertible {
    let description: String
    init(_ description: String) { self.description = description }
}

enum IO {
    /// Everything on standard input, as bytes.
    static func readStandardInput() -> Data {
        FileHandle.standardInput.readDataToEndOfFile()
    }

    /// Standard input as UTF-8 text, exactly (no trimming).
    static func readStandardInputText(_ what: String) throws -> String {
        // String(validating:) keeps a leading U+FEFF; String(data:encoding:) would strip it.
        guard let text = String(validating: readStandardInput(), as: UTF8.self) else {
            throw CommandFailure("\(what) on standard input is not valid UTF-8")
        }
        return text
    }

    /// Writes exactly `text` to stdout (unbuffered, so pipes see it at once).
    static func write(_ text: String) {
        FileHandle.standardOutput.write(Data(text.utf8))
    }

    static func writeLine(_ text: String) { write(text + "\n") }
}

/// Runs `body`, turning library errors into one line on stderr and exit code 1.
func reportingErrors(_ body: () throws -> Void) throws {
    do {
        try body()
    } catch {
        try report(error)
    }
}

/// The same, for asynchronous commands.
func reportingErrors(_ body: () async throws -> Void) async throws {
    do {
        try await body()
    } catch {
        try report(error)
    }
}

/// Prints a library error as one line on stderr and exits with 1; anything else is rethrown.
private func report(_ error: any Error) throws -> Never {
    let message: String
    switch error {
    case let error as CommandFailure: message = error.description
    case let error as NostrError: message = error.message
    case let error as CryptoError: message = error.message
    case let error as NIP46Error: message = error.description
    case let error as BunkerError: message = error.description
    default: throw error
    }
    // Errors carry what a bunker, wallet or relay answered: escaped for the terminal.
    FileHandle.standardError.write(Data("error: \(message.escapingControlCharacters)\n".utf8))
    throw ExitCode(1)
}

/// Secret key options shared by the commands that sign or decrypt.
struct SecretKeyOption: ParsableArguments {
    @Option(
        name: .customLong("sec"),
        help: ArgumentHelp(
            "Secret key, hex or nsec. Defaults to the SWITCHBOARD_SECRET_KEY environment variable (which keeps it out of the process list).",
            valueName: "KEY"))
    var secret: String?

    func load() throws -> SecretKey {
        guard let text = secret ?? ProcessInfo.processInfo.environment["SWITCHBOARD_SECRET_KEY"] else {
            throw CommandFailure("no secret key: pass --sec or set SWITCHBOARD_SECRET_KEY")
        }
        do {
            return try SecretKey(hexOrNsec: text.trimmingCharacters(in: .whitespacesAndNewlines))
        } catch {
            throw CommandFailure("invalid secret key (expected 64 hex characters or an nsec)")
        }
    }
}

func parsePublicKey(_ text: String) throws -> PublicKey {
    let key: PublicKey
    do {
        key = try PublicKey(hexOrNpub: text)
    } catch {
        throw CommandFailure("invalid public key \"\(text.prefix(70))\" (expected 64 hex characters or an npub)")
    }
    guard key.isOnCurve else { throw CommandFailure("public key \(key.hex) is not a point on secp256k1") }
    return key
}
