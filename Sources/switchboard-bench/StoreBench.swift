import Foundation
import NostrCore
import NostrCrypto
import NostrRelay

/// The embedded relay's stores under queries a relay serves: how long the newest `limit` events matching a filter
/// take to find among many stored ones. SQLite (`switchboard relay --db`) is the baseline in the same run.
func runStore() async throws {
    let count = Int(ProcessInfo.processInfo.environment["BENCH_EVENTS"] ?? "") ?? 100_000
    say("switchboard-bench store — release build, one thread, \(format(Double(count))) stored events")
    let authors = (0..<50).map { _ in SecretKey.generate() }
    let start = Timestamp.now - Timestamp(count)
    // Kinds 1 (80 %), 7 and 0; one of 100 topics each; created_at out of order (a tenth up to an hour late).
    var rng = SystemRandomNumberGenerator()
    let events: [Event] = (0..<count).map { i in
        let roll = Int.random(in: 0..<10, using: &rng)
        let kind: Kind = roll < 8 ? 1 : (roll == 8 ? 7 : 0)
        let late = roll == 9 ? Timestamp.random(in: 0..<3_600, using: &rng) : 0
        return EventTemplate(
            kind: kind, content: "note \(i) with a little text in it", tags: [["t", "topic\(i % 100)"]],
            createdAt: start + Timestamp(i) - min(late, start + Timestamp(i))
        ).sign(with: authors[i % authors.count])
    }
    let now = Timestamp.now
    let directory = FileManager.default.temporaryDirectory.appendingPathComponent("switchboard-bench-\(UUID().uuidString)")
    try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
    defer { try? FileManager.default.removeItem(at: directory) }
    let stores: [(name: String, store: any EventStore)] = [
        ("memory", MemoryEventStore()),
        ("SQLite", try SQLiteEventStore(path: directory.appendingPathComponent("events.sqlite").path)),
    ]
    var saveRates: [Double] = []
    for (_, store) in stores {
        let began = Date()
        for event in events { _ = try await store.save(event, now: now) }
        saveRates.append(Double(count) / Date().timeIntervalSince(began))
    }
    say("save, one at a time               memory \(padLeft(format(saveRates[0]), 9)) events/s   SQLite \(padLeft(format(saveRates[1]), 9)) events/s")
    let filters: [(String, Filter)] = [
        ("newest 100 of all", Filter(limit: 100)),
        ("kind 1, newest 100", Filter(kinds: [1], limit: 100)),
        ("one topic (1 %), newest 100", Filter(tags: ["t": ["topic42"]], limit: 100)),
        ("one author, an hour, newest 500", Filter(authors: [authors[7].publicKey], since: now - 3_600, limit: 500)),
        ("kind 0, no limit", Filter(kinds: [0])),
    ]
    for (name, filter) in filters {
        var rates: [Double] = []
        var answers: [[EventID]] = []
        for (_, store) in stores {
            answers.append(try await store.query([filter], now: now).map(\.id))
            var queries = 0
            let began = Date()
            while Date().timeIntervalSince(began) < 1 {
                blackHole(try await store.query([filter], now: now))
                queries += 1
            }
            rates.append(Double(queries) / Date().timeIntervalSince(began))
        }
        guard answers[0] == answers[1] else { throw BenchFailure("the stores answered \(name) differently") }
        say("\(pad(name, 33)) memory \(padLeft(format(rates[0]), 9)) queries/s   SQLite \(padLeft(format(rates[1]), 9)) queries/s   ratio \(String(format: "%.1f", rates[0] / rates[1]))   (\(answers[0].count) events)")
    }
}
