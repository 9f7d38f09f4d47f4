internal import Foundation

/// Standard base64 with padding (RFC 4648), for NIP-44 and NIP-04 payloads.
///
/// Uses Foundation's vectorised codec: payloads are ciphertext and IVs, which are public, so a
/// variable-time codec leaks nothing (secret material is never base64-encoded by this library).
public enum Base64 {
    /// Encodes bytes.
    public static func encode(_ bytes: UnsafeRawBufferPointer) -> String {
        guard let base = bytes.baseAddress, bytes.count > 0 else { return "" }
        return Data(bytesNoCopy: UnsafeMutableRawPointer(mutating: base), count: bytes.count, deallocator: .none)
            .base64EncodedString()
    }

    /// Decodes strictly: padding required, no whitespace or other characters. `nil` when invalid.
    public static func decode(_ text: String) -> [UInt8]? {
        if text.isEmpty { return [] }
        guard text.utf8.count % 4 == 0, let data = Data(base64Encoded: text) else { return nil }
        return [UInt8](data)
    }
}
