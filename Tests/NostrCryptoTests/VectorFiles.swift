import Foundation

/// Loads the official vector files copied byte for byte into `Vectors/`.
enum VectorFiles {
    static func data(_ name: String) throws -> Data {
        guard let url = Bundle.module.url(forResource: name, withExtension: nil, subdirectory: "Vectors") else {
            throw CocoaError(.fileNoSuchFile)
        }
        return try Data(contentsOf: url)
    }

    struct BIP340Row: Sendable, CustomStringConvertible {
        let index: Int
        let secretKey: String
        let publicKey: String
        let auxRand: String
        let message: String
        let signature: String
        let valid: Bool
        let comment: String
        var description: String { "#\(index) \(comment)" }
    }

    static func bip340() throws -> [BIP340Row] {
        let text = String(decoding: try data("bip340-test-vectors.csv"), as: UTF8.self)
        return text.split(whereSeparator: \.isNewline).dropFirst().map { line in
            let f = line.split(separator: ",", omittingEmptySubsequences: false).map(String.init)
            return BIP340Row(
                index: Int(f[0]) ?? -1, secretKey: f[1], publicKey: f[2], auxRand: f[3], message: f[4],
                signature: f[5], valid: f[6] == "TRUE", comment: f.count > 7 ? f[7...].joined(separator: ",") : "")
        }
    }

    static func nip44() throws -> [String: Any] {
        let root = try JSONSerialization.jsonObject(with: data("nip44.vectors.json")) as? [String: Any]
        return root?["v2"] as? [String: Any] ?? [:]
    }

    static func nip44Cases(_ path: String...) throws -> [[String: Any]] {
        var node: Any = try nip44()
        for key in path { node = (node as? [String: Any])?[key] as Any }
        return node as? [[String: Any]] ?? []
    }
}

func hexBytes(_ hex: String) -> [UInt8] { NostrCryptoTestsHex.decode(hex) }

enum NostrCryptoTestsHex {
    static func decode(_ hex: String) -> [UInt8] {
        var out = [UInt8]()
        var chars = Array(hex.utf8)
        if chars.count % 2 == 1 { chars.insert(UInt8(ascii: "0"), at: 0) }
        var i = 0
        while i < chars.count {
            out.append(UInt8(String(decoding: chars[i..<(i + 2)], as: UTF8.self), radix: 16) ?? 0)
            i += 2
        }
        return out
    }
}
