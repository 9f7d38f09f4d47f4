import Foundation
public import NostrCrypto
import NostrService

/// A user key the bunker signs with, and the remote-signer key that carries its NIP-46 traffic.
///
/// The two are distinct so that the transport key in a `bunker://` URI never signs anything for the user, and
/// so that several signers for one user key do not answer each other's clients on a shared relay.
public struct BunkerIdentity: Sendable {
    public let user: SecretKey
    public let signer: SecretKey

    public init(user: SecretKey, signer: SecretKey) {
        self.user = user
        self.signer = signer
    }
}

/// The keys in a bunker's data directory: `keys/<user pubkey hex>.json` per user key, mode 0600, holding both
/// secret keys as NIP-49 `ncryptsec` (scrypt log_n 16, XChaCha20-Poly1305) under the operator's passphrase, and
/// the two public keys in the clear so that listing needs no passphrase.
public struct KeyStore: Sendable {
    /// scrypt cost of newly stored keys: 2^16 iterations (64 MiB, ~0.2 s here per key).
    public static let logN: UInt8 = 16

    public let directory: URL
    var keysDirectory: URL { directory.appendingPathComponent("keys", isDirectory: true) }

    public init(directory: URL) {
        self.directory = directory
    }

    struct KeyFile: Codable {
        var user: String
        var signer: String
        var userKey: String
        var signerKey: String

        enum CodingKeys: String, CodingKey {
            case user, signer
            case userKey = "user_ncryptsec"
            case signerKey = "signer_ncryptsec"
        }
    }

    /// Creates the data directory (0700) and its key directory if they do not exist.
    public func create() throws {
        for url in [directory, keysDirectory] {
            try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
        }
    }

    /// Stores `user` with a new remote-signer key, both encrypted under `passphrase`. `keySecurity` records how
    /// `user` was handled before (NIP-49: an imported nsec was handled in the clear, a generated key was not).
    @discardableResult
    public func add(_ user: SecretKey, passphrase: String, keySecurity: NIP49.KeySecurity) throws -> BunkerIdentity {
        try create()
        let file = keysDirectory.appendingPathComponent("\(user.publicKey.hex).json")
        guard !FileManager.default.fileExists(atPath: file.path) else {
            throw BunkerError("the key \(user.publicKey.hex) is already in \(directory.path)")
        }
        let identity = BunkerIdentity(user: user, signer: SecretKey.generate())
        let record = KeyFile(
            user: user.publicKey.hex, signer: identity.signer.publicKey.hex,
            userKey: try NIP49.encrypt(user, password: passphrase, logN: Self.logN, keySecurity: keySecurity),
            signerKey: try NIP49.encrypt(identity.signer, password: passphrase, logN: Self.logN, keySecurity: .secure))
        let encoder = JSONEncoder()
        encoder.outputFormatting = [.prettyPrinted, .sortedKeys]
        try PrivateFile.create(atPath: file.path, contents: Array(try encoder.encode(record)))
        return identity
    }

    /// The stored user keys and their remote-signer keys (no passphrase needed), ordered by user key.
    public func list() throws -> [(user: PublicKey, signer: PublicKey)] {
        try records().map { (try PublicKey(hex: $0.user), try PublicKey(hex: $0.signer)) }
    }

    /// Decrypts every stored key; fails on a wrong passphrase.
    public func unlock(passphrase: String) throws -> [BunkerIdentity] {
        try records().map { record in
            let user = try decrypt(record.userKey, passphrase: passphrase)
            let signer = try decrypt(record.signerKey, passphrase: passphrase)
            guard user.publicKey.hex == record.user, signer.publicKey.hex == record.signer else {
                throw BunkerError("the key file for \(record.user) does not match its keys")
            }
            return BunkerIdentity(user: user, signer: signer)
        }
    }

    /// The user key's `ncryptsec`, after checking that `passphrase` opens it.
    public func export(_ user: PublicKey, passphrase: String) throws -> String {
        guard let record = try records().first(where: { $0.user == user.hex }) else {
            throw BunkerError("no key \(user.hex) in \(directory.path)")
        }
        _ = try decrypt(record.userKey, passphrase: passphrase)
        return record.userKey
    }

    private func decrypt(_ ncryptsec: String, passphrase: String) throws -> SecretKey {
        do {
            return try NIP49.decrypt(ncryptsec, password: passphrase)
        } catch {
            throw BunkerError("wrong passphrase, or a damaged key file")
        }
    }

    private func records() throws -> [KeyFile] {
        guard FileManager.default.fileExists(atPath: keysDirectory.path) else { return [] }
        let names = try FileManager.default.contentsOfDirectory(atPath: keysDirectory.path).filter { $0.hasSuffix(".json") }.sorted()
        return try names.map { name in
            let data = try Data(contentsOf: keysDirectory.appendingPathComponent(name))
            return try JSONDecoder().decode(KeyFile.self, from: data)
        }
    }
}

/// A bunker operation that failed, with a message for the operator.
public struct BunkerError: Error, CustomStringConvertible, Sendable {
    public let description: String
    public init(_ description: String) { self.description = description }
}
