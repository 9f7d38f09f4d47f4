import ArgumentParser
import NostrCore
import NostrCrypto

struct EventCommand: ParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "event", abstract: "Sign and verify events.", subcommands: [Sign.self, Verify.self])

    struct Sign: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Sign an event and print it as one JSON line.",
            discussion: """
                With --kind, the event is built from the options. Without it, an event template \
                {"kind":…,"content":…,"tags":[…],"created_at":…} is read from standard input (tags and created_at \
                optional), so any content, NUL included, can be signed.
                """)

        @OptionGroup var secret: SecretKeyOption
        @Option(help: "Event kind, 0–65535.") var kind: UInt16?
        @Option(help: "Event content.") var content: String?
        @Option(name: .customLong("tag"), help: ArgumentHelp("A tag as a JSON array of strings, e.g. '[\"p\",\"<hex>\"]'. Repeatable.", valueName: "JSON_ARRAY"))
        var tags: [String] = []
        @Option(help: "created_at in Unix seconds (default: now).") var createdAt: Int64?

        func run() throws {
            try reportingErrors {
                let key = try secret.load()
                var template: EventTemplate
                if let kind {
                    template = EventTemplate(kind: Kind(kind), content: content ?? "")
                    for tag in tags {
                        let parsed = try JSON.parse(tag)
                        guard case .array(let fields) = parsed else { throw CommandFailure("--tag must be a JSON array of strings: \(tag)") }
                        template.tags.append(Tag(try fields.map { field in
                            guard case .string(let s) = field else { throw CommandFailure("--tag must be a JSON array of strings: \(tag)") }
                            return s
                        }))
                    }
                } else {
                    guard content == nil, tags.isEmpty else {
                        throw CommandFailure("--content and --tag need --kind; without --kind the template is read from stdin")
                    }
                    template = try EventTemplate(json: IO.readStandardInputText("the event template"))
                }
                if let createdAt {
                    guard createdAt >= 0 else { throw CommandFailure("--created-at must be non-negative") }
                    template.createdAt = createdAt
                }
                IO.writeLine(template.sign(with: key).json)
            }
        }
    }

    struct Verify: ParsableCommand {
        static let configuration = CommandConfiguration(
            abstract: "Read one event JSON from standard input; exit 0 when its id and signature are valid, 1 otherwise.")

        func run() throws {
            try reportingErrors {
                let event = try Event(json: IO.readStandardInputText("the event"))
                try event.verify()
                IO.writeLine("valid: \(event.id.hex)")
            }
        }
    }
}
