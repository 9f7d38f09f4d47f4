public import Foundation
public import NostrCrypto

/// A daemon's own secret key in a file of its data directory, mode 0600: NIP-49 `ncryptsec` (scrypt log_n 16)
/// when a passphrase is given in the environment, else hex.
public struct KeyFile: Sendable {
    public let url: URL
    /// The environment variable holding the passphrase (unset or empty: the key is stored in hex).
    public let passphraseVariable: String

    public init(url: URL, passphraseVariable: String) {
        self.url = url
        self.passphraseVariable = passphraseVariable
    }

    private var passphrase: String? {
        ProcessInfo.processInfo.environment[passphraseVariable].flatMap { $0.isEmpty ? nil : $0 }
    }

    /// Whether the file exists.
    public var exists: Bool { FileManager.default.fileExists(atPath: url.path) }

    /// The stored key; created (generated) when the file does not exist yet.
    public func loadOrCreate() throws -> SecretKey {
        if exists { return try load() }
        let key = SecretKey.generate()
        try store(key)
        return key
    }

    /// The stored key.
    public func load() throws -> SecretKey {
        let stored = try String(contentsOf: url, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        if stored.hasPrefix("ncryptsec1") {
            guard let passphrase else { throw KeyFileError("\(url.path) is encrypted: set \(passphraseVariable)") }
            return try NIP49.decrypt(stored, password: passphrase)
        }
        return try SecretKey(hex: stored)
    }

    /// Writes `key` to a new file; an existing one is never overwritten.
    public func store(_ key: SecretKey) throws {
        guard !exists else { throw KeyFileError("\(url.path) already exists") }
        let stored = try passphrase.map { try NIP49.encrypt(key, password: $0, logN: 16, keySecurity: .secure) } ?? key.exportHex()
        try PrivateFile.create(atPath: url.path, contents: Array((stored + "\n").utf8))
    }
}

public struct KeyFileError: Error, CustomStringConvertible {
    public let description: String
    init(_ description: String) { self.description = description }
}
