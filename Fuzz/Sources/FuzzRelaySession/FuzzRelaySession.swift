import CLibFuzzer
import NostrCore
import NostrRelay

// The embedded relay's whole input path: each line of the input is one WebSocket message to one connection's
// session (rate limit, size limit, bounded sniffing of refused messages, parsing, NIP-42, subscriptions).
// It must never trap, and every message but a CLOSE must get at least one reply or action (clients wait for
// OK, EOSE or CLOSED, and junk gets a NOTICE).

func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let data else { return 0 }
    let text = String(decoding: UnsafeBufferPointer(start: data, count: size), as: UTF8.self)
    var policy = RelayPolicy(relayURL: "ws://127.0.0.1:7777")
    policy.authRequired = size % 2 == 0
    policy.maximumMessageLength = 4096
    policy.messagesPerSecond = 5
    policy.messageBurst = 8
    var session = RelaySession(policy: policy, challenge: "challenge", now: 0)
    var monotonic = 0.0
    for line in text.split(separator: "\n", omittingEmptySubsequences: true) {
        let message = String(line)
        let actions = session.receive(message, clock: 1_700_000_000, monotonic: monotonic)
        monotonic += 0.05
        if case .close = try? ClientMessage(json: message) { continue }
        precondition(!actions.isEmpty, "a message got no answer")
    }
    return 0
}

/// The entry point SwiftPM links executables through; hands control to libFuzzer's driver.
@_cdecl("FuzzRelaySession_main")
func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var argc = argc
    var argv = argv
    return LLVMFuzzerRunDriver(&argc, &argv) { data, size in fuzzOne(data, size) }
}
