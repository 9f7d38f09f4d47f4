import ArgumentParser
import NostrCore
import NostrCrypto

struct Encrypt: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Encrypt TEXT (or standard input, exactly) to PUBKEY with NIP-44 v2, or NIP-04 with --nip04.")

    @OptionGroup var secret: SecretKeyOption
    @Option(name: .customLong("to"), help: ArgumentHelp("Recipient public key, hex or npub.", valueName: "PUBKEY"))
    var recipient: String
    @Flag(help: "Use legacy NIP-04 (AES-256-CBC) instead of NIP-44.") var nip04 = false
    @Argument(help: "The plaintext; read from standard input when omitted.") var text: String?

    func run() throws {
        try reportingErrors {
            let key = try secret.load()
            let to = try parsePublicKey(recipient)
            let plaintext = try text ?? IO.readStandardInputText("the plaintext")
            if nip04 {
                IO.writeLine(try NIP04.encrypt(plaintext, secretKey: key, publicKey: to))
            } else {
                let conversation = try ConversationKey(secretKey: key, publicKey: to)
                IO.writeLine(try NIP44.encrypt(plaintext, conversationKey: conversation))
            }
        }
    }
}

struct Decrypt: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Decrypt a NIP-44 payload (or NIP-04, detected by ?iv=) from PUBKEY; prints the plaintext exactly.")

    @OptionGroup var secret: SecretKeyOption
    @Option(name: .customLong("from"), help: ArgumentHelp("Sender public key, hex or npub.", valueName: "PUBKEY"))
    var sender: String
    @Argument(help: "The payload; read from standard input when omitted (surrounding whitespace ignored).")
    var payload: String?

    func run() throws {
        try reportingErrors {
            let key = try secret.load()
            let from = try parsePublicKey(sender)
            let input = try (payload ?? IO.readStandardInputText("the payload")).trimmingCharacters(in: .whitespacesAndNewlines)
            if NIP04.isNIP04Payload(input) {
                IO.write(try NIP04.decrypt(input, secretKey: key, publicKey: from))
            } else {
                let conversation = try ConversationKey(secretKey: key, publicKey: from)
                IO.write(try NIP44.decrypt(input, conversationKey: conversation))
            }
        }
    }
}

struct Encode: ParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Encode 64 hex characters as npub, nsec or note (NIP-19).")

    enum EntityKind: String, ExpressibleByArgument, CaseIterable { case npub, nsec, note }

    @Argument(help: "npub, nsec or note.") var kind: EntityKind
    @Argument(help: "64 hex characters.") var hex: String

    func run() throws {
        try reportingErrors {
            switch kind {
            case .npub: IO.writeLine(try PublicKey(validatingHex: hex).npub)
            case .note: IO.writeLine(NIP19Entity.note(try EventID(hex: hex)).bech32)
            case .nsec: IO.writeLine(try SecretKey(hex: hex).exportNsec())
            }
        }
    }
}

struct Decode: ParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Decode a NIP-19 string (or nostr: URI): hex for npub, nsec and note; JSON for nprofile, nevent and naddr.")

    @Argument(help: "The bech32 string.") var text: String

    func run() throws {
        try reportingErrors {
            var input = text.trimmingCharacters(in: .whitespacesAndNewlines)
            if input.lowercased().hasPrefix("nostr:") { input = String(input.dropFirst(6)) }
            if input.lowercased().hasPrefix("nsec1") {
                IO.writeLine(try SecretKey(nsec: input).exportHex())
                return
            }
            let entity = try NIP19Entity(bech32: input)
            switch entity {
            case .npub(let key): IO.writeLine(key.hex)
            case .note(let id): IO.writeLine(id.hex)
            default:
                var writer = JSONWriter()
                writer.value(entity.jsonValue)
                IO.writeLine(writer.text)
            }
        }
    }
}
