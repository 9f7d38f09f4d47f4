import NostrCore
import NostrCrypto
import Testing
@testable import WalletKit

@Suite("LNbits backend: releasing unrecorded payments, looking up unpaid invoices")
struct LNbitsBackendTests {
    @Test("a reservation younger than the grace stays pending (LNbits may still have it queued); an older one is released")
    func unrecordedGrace() {
        let payment = WalletTransaction(
            connection: "c", direction: .outgoing, state: .pending, paymentHash: SHA256.hash([1]), amountMsat: 1_000, createdAt: 1_000)
        let grace = LNbitsBackend.Configuration().unrecordedGrace
        #expect(grace >= .seconds(300), "longer than LNbits' queue of a wallet's payments plausibly takes")
        #expect(!LNbitsBackend.neverRecorded(payment, now: 1_000, grace: grace))
        #expect(!LNbitsBackend.neverRecorded(payment, now: 1_000 + grace.components.seconds - 1, grace: grace))
        #expect(LNbitsBackend.neverRecorded(payment, now: 1_000 + grace.components.seconds, grace: grace))
    }

    @Test("unpaid invoice lookups: the newest 100 every round, and every older one within a bounded number of rounds", arguments: [0, 50, 100, 101, 350, 1_000])
    func lookupRotation(count: Int) {
        let pending = (0..<count).map { index in
            WalletTransaction(
                connection: "c", direction: .incoming, state: .pending, paymentHash: SHA256.hash(Array("\(index)".utf8)), amountMsat: 1_000,
                createdAt: Timestamp(index))
        }
        let newest = Set(pending.suffix(100).map(\.paymentHash))
        var seen = Set<Bytes32>()
        var turn = 0
        let rounds = max(1, (count - 100 + 99) / 100)
        for _ in 0..<rounds {
            let (batch, next) = LNbitsBackend.lookupBatch(of: pending, turn: turn)
            #expect(batch.count <= 200)
            #expect(newest.isSubset(of: Set(batch.map(\.paymentHash))))
            seen.formUnion(batch.map(\.paymentHash))
            turn = next
        }
        #expect(seen.count == count, "every unpaid invoice looked up within \(rounds) rounds")
    }
}
