import DVMKit
import NostrCore
import NostrCrypto
import NostrRelay
import Testing

@Suite("NIP-90 job requests: reading and writing")
struct JobRequestTests {
    let customer = SecretKey.generate()

    func event(_ tags: [NostrCore.Tag], kind: Kind = 5050, content: String = "") -> Event {
        EventTemplate(kind: kind, content: content, tags: tags).sign(with: customer)
    }

    @Test("inputs, parameters, output, bid and relays are read from the tags")
    func plain() throws {
        let id = String(repeating: "ab", count: 32)
        let request = try JobRequest(event([
            ["i", "hello", "text"], ["i", id, "event", "wss://hint.example", "source"], ["i", "https://example.com/a", "url"],
            ["param", "lang", "es"], ["param", "range", "1", "5"], ["output", "text/plain"], ["bid", "21000"],
            ["relays", "wss://a.example", "not a relay", "wss://b.example"],
        ]))
        #expect(request.inputs.map(\.type) == [.text, .event, .url])
        #expect(request.inputs[1].relay == "wss://hint.example" && request.inputs[1].marker == "source")
        #expect(request.parameter("lang") == "es")
        #expect(request.parameters[1].values == ["1", "5"])
        #expect(request.output == "text/plain" && request.bid == 21_000)
        #expect(request.relays.map(\.string) == ["wss://a.example", "wss://b.example"])
        #expect(!request.isEncrypted)
        // Tags written back read the same.
        #expect(request.inputs.map(\.tag) == [["i", "hello", "text"], ["i", id, "event", "wss://hint.example", "source"], ["i", "https://example.com/a", "url"]])
    }

    @Test("an encrypted request's hidden tags are merged with its clear ones")
    func encrypted() throws {
        let request = try JobRequest(
            event([["p", customer.publicKey.hex], ["encrypted"]], content: "ignored"),
            decryptedContent: #"[["i","secret","text"],["param","model","x"],["relays","wss://hidden.example"]]"#)
        #expect(request.isEncrypted)
        #expect(request.inputs.map(\.data) == ["secret"])
        #expect(request.parameter("model") == "x")
        #expect(request.relays.map(\.string) == ["wss://hidden.example"])
    }

    @Test("bad requests are refused with a reason", arguments: [
        ([["i", "x", "prompt"]], "unsupported input type"),
        ([["i", "x"]], "needs data and an input type"),
        ([["i", "not-an-id", "event"]], "must be an event id"),
        ([["bid", "-5"]], "whole number"),
        ([["param", "lonely"]], "needs a name and a value"),
    ] as [([NostrCore.Tag], String)])
    func bad(tags: [NostrCore.Tag], reason: String) {
        #expect {
            try JobRequest(event(tags))
        } throws: { error in
            (error as? JobRequestError)?.reason.contains(reason) == true
        }
    }

    @Test("encrypted content that is not a JSON array of string tags is refused")
    func badHiddenTags() {
        for content in ["{}", "[1]", #"[["i", 5]]"#, "not json", "[[]]"] {
            #expect(throws: JobRequestError.self, "\(content)") {
                try JobRequest(event([["encrypted"]]), decryptedContent: content)
            }
        }
    }

    @Test("only job request kinds are read, and results are 1000 above")
    func kinds() {
        #expect(throws: JobRequestError.self) { try JobRequest(event([], kind: 1)) }
        #expect(NIP90.resultKind(of: 5050) == 6050)
        #expect(NIP90.isRequestKind(5999) && !NIP90.isRequestKind(6000) && !NIP90.isRequestKind(4999))
    }

    @Test("too many inputs are refused")
    func tooMany() {
        let tags = (0...JobRequest.maximumInputs).map { NostrCore.Tag(["i", "\($0)", "text"]) }
        #expect(throws: JobRequestError.self) { try JobRequest(event(tags)) }
    }
}
