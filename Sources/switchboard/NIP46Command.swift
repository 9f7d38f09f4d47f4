import ArgumentParser
import BunkerKit
import Foundation
import NostrCore
import NostrCrypto
import NostrService

struct NIP46Command: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "nip46",
        abstract: "Call a NIP-46 remote signer (a bunker) and print the result.",
        discussion: """
            Connects with the URI's secret first (when it has one), then calls METHOD. sign_event takes an event \
            template, {"kind":…,"content":…,"tags":[…]}, and prints the signed event after checking its \
            signature. An auth challenge's URL is printed on standard error; the call then waits for the answer. \
            The client key is --sec or SWITCHBOARD_SECRET_KEY, else the one in --key-file (created if missing), \
            else a new one: a bunker:// secret works once, so keep a key file to call again.

              switchboard nip46 --key-file client.key 'bunker://…?relay=…&secret=…' get_public_key
              switchboard nip46 --key-file client.key 'bunker://…?relay=…' sign_event '{"kind":1,"content":"hi"}'
            """)

    @Option(name: .customLong("sec"), help: ArgumentHelp("The client's secret key, hex or nsec.", valueName: "KEY")) var secret: String?
    @Option(help: "A file holding the client's secret key in hex (created, mode 0600, if missing).") var keyFile: String?
    @Flag(help: "Encrypt requests with NIP-04 instead of NIP-44 (for old signers).") var nip04 = false
    @Option(help: "Seconds to wait for each response.") var timeout: Int = 30
    @Option(help: "Permissions to ask for in connect (comma-separated; the operator decides).") var perms = ""
    @Argument(help: "bunker://<remote-signer pubkey>?relay=…[&secret=…]") var uri: String
    @Argument(help: "connect, get_public_key, sign_event, ping, nip04_encrypt, nip04_decrypt, nip44_encrypt, nip44_decrypt, switch_relays, logout, …")
    var method: String
    @Argument(help: "The method's parameters.") var params: [String] = []

    func run() async throws {
        try await reportingErrors {
            let bunker = try BunkerURI(uri)
            var client = NIP46Client(uri: bunker, key: try clientKey())
            client.timeout = .seconds(max(1, timeout))
            client.encryption = nip04 ? .nip04 : .nip44
            client.onAuthChallenge = { url in
                FileHandle.standardError.write(Data("approval needed: open \(url.escapingControlCharacters)\n".utf8))
            }
            let output = try await client.run { signer -> String in
                if method == "connect" {
                    return try await signer.call("connect", [bunker.signer.hex, bunker.secret ?? "", perms])
                }
                if bunker.secret != nil { try await signer.connect(permissions: perms) }
                if method == "sign_event" {
                    guard params.count == 1 else { throw CommandFailure("sign_event takes one event template") }
                    return try await signer.sign(try EventTemplate(json: params[0])).json
                }
                return try await signer.call(method, params)
            }
            IO.writeLine(output)
        }
    }

    func clientKey() throws -> SecretKey {
        if let text = secret ?? ProcessInfo.processInfo.environment["SWITCHBOARD_SECRET_KEY"] {
            guard let key = try? SecretKey(hexOrNsec: text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
                throw CommandFailure("invalid secret key (expected 64 hex characters or an nsec)")
            }
            return key
        }
        guard let keyFile else { return SecretKey.generate() }
        if let text = try? String(contentsOfFile: keyFile, encoding: .utf8) {
            guard let key = try? SecretKey(hexOrNsec: text.trimmingCharacters(in: .whitespacesAndNewlines)) else {
                throw CommandFailure("\(keyFile) does not hold a secret key")
            }
            return key
        }
        let key = SecretKey.generate()
        try PrivateFile.create(atPath: keyFile, contents: Array((key.exportHex() + "\n").utf8))
        return key
    }
}
