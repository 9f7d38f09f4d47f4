import CLibFuzzer
import NostrCore

// Parsing arbitrary relay and client messages must never trap. A message that parses must serialise and
// parse back to an equal value (the codec is lossless on what it accepts). The direct reader for EVENT
// messages must decide exactly as the general reader over the parsed tree does.

func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let data else { return 0 }
    let bytes = UnsafeBufferPointer(start: data, count: size)
    let text = String(decoding: bytes, as: UTF8.self)
    let tree = try? JSON.parse(text)
    precondition((try? ClientMessage(json: text)) == tree.flatMap { try? ClientMessage(jsonValue: $0) }, "client readers disagree")
    precondition((try? RelayMessage(json: text)) == tree.flatMap { try? RelayMessage(jsonValue: $0) }, "relay readers disagree")
    precondition((try? Event(json: text)) == tree.flatMap { try? Event(jsonValue: $0) }, "event readers disagree")
    if let message = try? RelayMessage(json: String(decoding: bytes, as: UTF8.self)) {
        let again = try? RelayMessage(json: message.json)
        precondition(again == message, "relay message did not round-trip")
    }
    if let message = try? ClientMessage(json: String(decoding: bytes, as: UTF8.self)) {
        let again = try? ClientMessage(json: message.json)
        precondition(again == message, "client message did not round-trip")
    }
    _ = try? JSON.parse(bytes: bytes)
    return 0
}

/// The entry point SwiftPM links executables through; hands control to libFuzzer's driver.
@_cdecl("FuzzMessages_main")
func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var argc = argc
    var argv = argv
    return LLVMFuzzerRunDriver(&argc, &argv) { data, size in fuzzOne(data, size) }
}
