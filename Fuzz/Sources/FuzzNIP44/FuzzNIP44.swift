import CLibFuzzer
@_spi(Fuzzing) import NostrCrypto

// Decrypting arbitrary payloads must never trap: every input ends in a plaintext or a CryptoError.
// A payload that does decrypt must re-encrypt and decrypt to the same bytes.

let key: ConversationKey = {
    let bytes = [UInt8](repeating: 7, count: 32)
    return try! bytes.withUnsafeBytes { try ConversationKey(bytes: $0) }
}()

func fuzzOne(_ data: UnsafePointer<UInt8>?, _ size: Int) -> CInt {
    guard let data else { return 0 }
    let bytes = UnsafeBufferPointer(start: data, count: size)
    let text = String(decoding: bytes, as: UTF8.self)
    if let plain = try? NIP44.decryptBytes(text, conversationKey: key, maximumPayloadLength: 1 << 20) {
        let nonce = Bytes32([UInt8](repeating: 1, count: 32))!
        let again = try! plain.withUnsafeBytes { try NIP44.encrypt(bytes: $0, conversationKey: key, nonce: nonce) }
        precondition(try! NIP44.decryptBytes(again, conversationKey: key) == plain, "round trip changed the plaintext")
    }
    // Base64 alone, on raw bytes.
    _ = Base64.decode(text)
    // The padding parser, which random payloads never reach past the MAC check: any input either unpads to
    // a plaintext that pads back to exactly the input, or throws.
    let input = Array(bytes)
    if let plain = try? NIP44.unpad(input) {
        precondition(!plain.isEmpty && input.count == (plain.count >= 65_536 ? 6 : 2) + NIP44.paddedLength(plain.count),
            "unpad accepted a body of the wrong size")
    }
    return 0
}

/// The entry point SwiftPM links executables through; hands control to libFuzzer's driver.
@_cdecl("FuzzNIP44_main")
func fuzzMain(_ argc: CInt, _ argv: UnsafeMutablePointer<UnsafeMutablePointer<CChar>?>?) -> CInt {
    var argc = argc
    var argv = argv
    return LLVMFuzzerRunDriver(&argc, &argv) { data, size in fuzzOne(data, size) }
}
