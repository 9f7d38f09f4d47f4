// The client of the uppercase example service: sends one NIP-44 encrypted request and prints the reply.
//
//   uppercase-client --relay ws://127.0.0.1:7777 --to SERVICE_PUBKEY TEXT
//
// Exits 1 if no reply arrives within 10 seconds.
import Foundation
import Logging
import NostrCore
import NostrCrypto
import NostrRelay

var relays: [RelayURL] = []
var service: PublicKey?
var text: String?
var iterator = CommandLine.arguments.dropFirst().makeIterator()
while let argument = iterator.next() {
    switch argument {
    case "--relay": relays += (iterator.next()).flatMap { try? RelayURL($0) }.map { [$0] } ?? []
    case "--to": service = iterator.next().flatMap { try? PublicKey(hexOrNpub: $0) }
    default: text = argument
    }
}
guard let service, let text, !relays.isEmpty else {
    FileHandle.standardError.write(Data("usage: uppercase-client --relay URL --to PUBKEY TEXT\n".utf8))
    exit(64)
}

/// Sends `text` to `service` and waits up to 10 s for its answer.
func ask(_ text: String, service: PublicKey, relays: [RelayURL]) async throws -> String? {
    let me = SecretKey.generate()
    let conversation = try ConversationKey(secretKey: me, publicKey: service)
    let request = EventTemplate(
        kind: 25_910, content: try NIP44.encrypt(text, conversationKey: conversation), tags: [["p", service.hex]]
    ).sign(with: me)
    let pool = RelayPool(relays: relays, logger: Logger(label: "uppercase-client") { _ in SwiftLogNoOpLogHandler() })
    return try await pool.withRunning {
        let filter = Filter(kinds: [25_911], tags: ["p": [me.publicKey.hex], "e": [request.id.hex]])
        return try await pool.withSubscription([filter]) { replies in
            // Subscribe first (ephemeral replies are not stored), then send.
            _ = await pool.publish(request)
            return await withTaskGroup(of: String?.self) { group in
                group.addTask {
                    for await item in replies {
                        if case .event(let reply, _) = item, reply.pubkey == service {
                            return try? NIP44.decrypt(reply.content, conversationKey: conversation)
                        }
                    }
                    return nil
                }
                group.addTask {
                    try? await Task.sleep(for: .seconds(10))
                    return nil
                }
                let first = await group.next() ?? nil
                group.cancelAll()
                return first
            }
        }
    }
}

guard let answer = try await ask(text, service: service, relays: relays) else {
    FileHandle.standardError.write(Data("no reply within 10 seconds\n".utf8))
    exit(1)
}
print(answer)
