import NostrCore
import NostrCrypto
import Testing
@testable import WalletKit

@Suite("LNbits backend: when a payment LNbits has no record of is released")
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
}
