internal import CSodium

/// Standard base64 with padding (RFC 4648), on libsodium's constant-time codec.
public enum Base64 {
    /// Encodes bytes.
    public static func encode(_ bytes: UnsafeRawBufferPointer) -> String {
        Sodium.ensureInitialized()
        let encodedCount = (bytes.count + 2) / 3 * 4
        if encodedCount == 0 { return "" }
        return String(unsafeUninitializedCapacity: encodedCount + 1) { out in
            _ = out.withMemoryRebound(to: CChar.self) { chars in
                sodium_bin2base64(
                    chars.baseAddress!, encodedCount + 1,
                    bytes.baseAddress?.assumingMemoryBound(to: UInt8.self), bytes.count,
                    sodium_base64_VARIANT_ORIGINAL)
            }
            return encodedCount
        }
    }

    /// Decodes strictly: padding required, no whitespace, nothing after the padding. `nil` when invalid.
    public static func decode(_ text: String) -> [UInt8]? {
        Sodium.ensureInitialized()
        var text = text
        return text.withUTF8 { utf8 -> [UInt8]? in
            if utf8.isEmpty { return [] }
            guard utf8.count % 4 == 0 else { return nil }
            var decoded = [UInt8](repeating: 0, count: utf8.count / 4 * 3)
            var length = 0
            let status = decoded.withUnsafeMutableBufferPointer { out in
                utf8.withMemoryRebound(to: CChar.self) { chars in
                    sodium_base642bin(
                        out.baseAddress!, out.count, chars.baseAddress, chars.count, nil, &length, nil,
                        sodium_base64_VARIANT_ORIGINAL)
                }
            }
            guard status == 0 else { return nil }
            decoded.removeLast(decoded.count - length)
            return decoded
        }
    }
}
