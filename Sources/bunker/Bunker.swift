import ArgumentParser
import BunkerKit
import Foundation
import Logging
import NostrCore
import NostrCrypto
import NostrRelay
import NostrService

@main
struct Bunker: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "bunker",
        abstract: "A NIP-46 remote signer: keeps users' keys on this machine and signs for their Nostr apps over relays.",
        discussion: """
            Keys are stored in DIR/keys as NIP-49 ncryptsec under a passphrase taken from BUNKER_PASSPHRASE or, \
            on a terminal, a prompt. Sessions, secrets and the request journal are in DIR/bunker.sqlite; the \
            commands below work on it while `bunker serve` runs.
            """,
        subcommands: [
            Init.self, KeyCommand.self, Serve.self, URICommand.self, Clients.self, Grant.self, Revoke.self, Audit.self, Connect.self,
            ApprovalsCommand.self, Approve.self, Deny.self,
        ])
}

struct DataDirectory: ParsableArguments {
    @Option(name: .customLong("data-dir"), help: "The bunker's data directory.")
    var path = "./bunker-data"

    var url: URL { URL(fileURLWithPath: path) }
    var keys: KeyStore { KeyStore(directory: url) }

    func openState() throws -> BunkerState {
        guard FileManager.default.fileExists(atPath: url.appendingPathComponent("keys").path) else {
            throw ValidationError("\(path) is not a bunker data directory; run `bunker init --data-dir \(path)` first")
        }
        // It holds unspent connection secrets: readable by the operator only (SQLite gives its -wal and -shm
        // files the same mode).
        let database = url.appendingPathComponent("bunker.sqlite").path
        try PrivateFile.createIfMissing(atPath: database)
        return BunkerState(store: try SQLiteServiceStore(path: database))
    }

    /// The approval pages' operator token, DIR/approval.token (0600), made on first use: whoever signs in
    /// with it decides auth challenges in a browser, as whoever can open the data directory can with `bunker
    /// approve`.
    func approvalToken() throws -> String {
        let path = url.appendingPathComponent("approval.token").path
        if !FileManager.default.fileExists(atPath: path) {
            do {
                try PrivateFile.create(atPath: path, contents: Array((Approvals.newOperatorToken() + "\n").utf8))
            } catch where FileManager.default.fileExists(atPath: path) {
                // Made meanwhile by another process: that one counts.
            }
        }
        let token = try String(contentsOfFile: path, encoding: .utf8).trimmingCharacters(in: .whitespacesAndNewlines)
        guard token.count >= 32, token.allSatisfy({ $0.isASCII && ($0.isLetter || $0.isNumber) }) else {
            throw ValidationError("\(path) must hold at least 32 letters and digits (delete it and a new one is made)")
        }
        return token
    }

    /// The relays `serve` uses, as it recorded them (for URIs minted by other commands).
    func recordedRelays() throws -> [RelayURL] {
        let file = url.appendingPathComponent("relays.json")
        guard let data = try? Data(contentsOf: file) else {
            throw ValidationError("no relays recorded yet: start `bunker serve` first, or pass --relay")
        }
        return try JSONDecoder().decode([String].self, from: data).map { try RelayURL($0) }
    }

    /// The embedded relays development-mode runs used (each start gets a new port), so that a later `serve` on real
    /// relays does not take them for relays its clients still use.
    func developmentRelays() -> Set<RelayURL> {
        Set(developmentRelayNames().compactMap { try? RelayURL($0) })
    }

    func recordDevelopmentRelay(_ relay: RelayURL) throws {
        // The last 100 are plenty: sessions given older ones are long gone or have moved.
        let names = Array((developmentRelayNames() + [relay.string]).suffix(100))
        try JSONEncoder().encode(names).write(to: url.appendingPathComponent("development-relays.json"), options: .atomic)
    }

    private func developmentRelayNames() -> [String] {
        guard let data = try? Data(contentsOf: url.appendingPathComponent("development-relays.json")) else { return [] }
        return (try? JSONDecoder().decode([String].self, from: data)) ?? []
    }

    func recordRelays(_ relays: [RelayURL]) throws {
        try JSONEncoder().encode(relays.map(\.string)).write(to: url.appendingPathComponent("relays.json"), options: .atomic)
    }
}

/// The passphrase: BUNKER_PASSPHRASE, or asked for on the terminal (twice when it is new).
func passphrase(new: Bool = false) throws -> String {
    if let value = ProcessInfo.processInfo.environment["BUNKER_PASSPHRASE"] {
        guard !value.isEmpty else { throw ValidationError("BUNKER_PASSPHRASE is empty") }
        return value
    }
    guard isatty(STDIN_FILENO) == 1 else {
        throw ValidationError("set BUNKER_PASSPHRASE, or run on a terminal to be asked for the passphrase")
    }
    let first = try readHidden(new ? "New passphrase: " : "Passphrase: ")
    guard !first.isEmpty else { throw ValidationError("the passphrase must not be empty") }
    if new, try readHidden("Again: ") != first { throw ValidationError("the passphrases differ") }
    return first
}

/// Reads a line from the terminal without echoing it.
func readHidden(_ prompt: String) throws -> String {
    FileHandle.standardError.write(Data(prompt.utf8))
    var saved = termios()
    tcgetattr(STDIN_FILENO, &saved)
    var quiet = saved
    quiet.c_lflag &= ~tcflag_t(ECHO)
    tcsetattr(STDIN_FILENO, TCSAFLUSH, &quiet)
    defer {
        tcsetattr(STDIN_FILENO, TCSAFLUSH, &saved)
        FileHandle.standardError.write(Data("\n".utf8))
    }
    return readLine(strippingNewline: true) ?? ""
}

/// Prints a line at once, with control characters escaped: it may carry text a client chose.
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line.escapingControlCharacters + "\n").utf8))
}

func npub(_ key: PublicKey) -> String { NIP19Entity.npub(key).bech32 }

/// A user key given as npub or hex, among the stored ones (the first when nil).
func storedKey(_ text: String?, in directory: DataDirectory) throws -> (user: PublicKey, signer: PublicKey) {
    let keys = try directory.keys.list()
    guard let first = keys.first else { throw ValidationError("no keys in \(directory.path); run `bunker init`") }
    guard let text else { return first }
    let wanted: PublicKey
    if case .npub(let key)? = try? NIP19Entity(bech32: text) {
        wanted = key
    } else if let key = try? PublicKey(hex: text) {
        wanted = key
    } else {
        throw ValidationError("--key takes an npub or 64 hex characters")
    }
    // The user key, or its remote-signer key (what `clients` and `revoke` show as signer=).
    guard let match = keys.first(where: { $0.user == wanted || $0.signer == wanted }) else { throw ValidationError("no key \(text) in \(directory.path)") }
    return match
}

struct Init: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create the data directory, the key store and its first user key (new, or imported).")

    @OptionGroup var directory: DataDirectory
    @Option(help: "Import this key (nsec, hex or ncryptsec) instead of generating one; - reads it from standard input (out of ps and shell history).") var `import`: String?

    func run() async throws {
        guard try directory.keys.list().isEmpty else {
            throw ValidationError("\(directory.path) already holds keys; add more with `bunker key add`")
        }
        let secret = try passphrase(new: true)
        let identity = try addKey(importing: `import`, passphrase: secret, to: directory)
        _ = try directory.openState()
        say(npub(identity.user.publicKey))
    }
}

/// Adds a generated or imported key; an imported ncryptsec is opened with `BUNKER_IMPORT_PASSPHRASE` or the
/// store's passphrase.
func addKey(importing given: String?, passphrase: String, to directory: DataDirectory) throws -> BunkerIdentity {
    let read = given != "-" ? given : isatty(STDIN_FILENO) == 1 ? try readHidden("Key to import: ") : readLine(strippingNewline: true)
    guard let text = read?.trimmingCharacters(in: .whitespacesAndNewlines) else {
        if given == "-" { throw ValidationError("--import -: nothing on standard input") }
        return try directory.keys.add(SecretKey.generate(), passphrase: passphrase, keySecurity: .secure)
    }
    if text.lowercased().hasPrefix("ncryptsec1") {
        let password = ProcessInfo.processInfo.environment["BUNKER_IMPORT_PASSPHRASE"] ?? passphrase
        let key = try NIP49.decrypt(text, password: password)
        return try directory.keys.add(key, passphrase: passphrase, keySecurity: (try? NIP49.keySecurity(of: text)) ?? .unknown)
    }
    guard let key = try? SecretKey(hexOrNsec: text) else { throw ValidationError("--import takes an nsec, 64 hex characters or an ncryptsec") }
    return try directory.keys.add(key, passphrase: passphrase, keySecurity: .insecure)
}

struct KeyCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "key", abstract: "Manage user keys.", subcommands: [Add.self, List.self, Export.self])

    struct Add: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add a user key (new, or imported); a running `serve` picks it up on restart.")
        @OptionGroup var directory: DataDirectory
        @Option(help: "Import this key (nsec, hex or ncryptsec) instead of generating one; - reads it from standard input (out of ps and shell history).") var `import`: String?

        func run() async throws {
            let secret = try passphrase()
            _ = try directory.keys.unlock(passphrase: secret)  // the same passphrase for every key
            say(npub(try addKey(importing: `import`, passphrase: secret, to: directory).user.publicKey))
        }
    }

    struct List: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "List user keys and their remote-signer keys (no passphrase needed).")
        @OptionGroup var directory: DataDirectory

        func run() async throws {
            for (user, signer) in try directory.keys.list() {
                say("\(npub(user))  remote signer \(signer.hex)")
            }
        }
    }

    struct Export: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Print a user key as NIP-49 ncryptsec (encrypted under the store's passphrase).")
        @OptionGroup var directory: DataDirectory
        @Option(help: "The user key (npub or hex); the first one by default.") var key: String?

        func run() async throws {
            let (user, _) = try storedKey(key, in: directory)
            say(try directory.keys.export(user, passphrase: try passphrase()))
        }
    }
}

/// Mints a secret usable for `lifetime` seconds (0: for ever), whose session lasts `sessionLifetime` seconds (0:
/// no limit), and returns its bunker:// URI.
func mintURI(
    for signer: PublicKey, relays: [RelayURL], permissions: Permissions, label: String?, lifetime: Int64, sessionLifetime: Int64 = 0,
    state: BunkerState
) async throws -> BunkerURI {
    let expiresAt = lifetime > 0 ? Int64(Date().timeIntervalSince1970) + lifetime : nil
    let secret = try await state.mintSecret(
        for: signer, permissions: permissions, label: label, expiresAt: expiresAt, sessionLifetime: sessionLifetime > 0 ? sessionLifetime : nil)
    return BunkerURI(signer: signer, relays: relays, secret: secret)
}

/// How long a minted bunker:// secret stays usable when no one connects with it (a URI printed to a log or a
/// terminal should not open the bunker for ever).
let defaultSecretLifetime: Int64 = 86_400

struct URICommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "uri", abstract: "Mint another single-use secret and print its bunker:// URI (works while `serve` runs).")

    @OptionGroup var directory: DataDirectory
    @Option(help: "The user key (npub or hex); the first one by default.") var key: String?
    @Option(help: "Permissions the connecting client gets, comma-separated (sign_event, sign_event:<kind>, nip04_encrypt, nip04_decrypt, nip44_encrypt, nip44_decrypt); all by default.")
    var perms: String?
    @Option(help: "A label for the connection, shown by `bunker clients`.") var label: String?
    @Option(help: "Relays to put in the URI; those `serve` uses by default.") var relay: [String] = []
    @Option(name: .customLong("valid-for"), help: "Seconds the secret can be used to connect (0: no limit).")
    var validFor: Int64 = defaultSecretLifetime
    @Option(name: .customLong("session-lifetime"), help: "Seconds the client's session lasts once connected; then it must connect again (0: no limit).")
    var sessionLifetime: Int64 = 0

    func run() async throws {
        let (_, signer) = try storedKey(key, in: directory)
        let permissions = try perms.map { try Permissions(parsing: $0) } ?? .all
        let relays = relay.isEmpty ? try directory.recordedRelays() : try relay.map { try RelayURL($0) }
        say(try await mintURI(
            for: signer, relays: relays, permissions: permissions, label: label, lifetime: max(0, validFor),
            sessionLifetime: max(0, sessionLifetime), state: try directory.openState()
        ).description)
    }
}

struct Clients: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List connected clients: name, url, permissions, last use.")
    @OptionGroup var directory: DataDirectory

    func run() async throws {
        let formatter = ISO8601DateFormatter()
        for session in try await directory.openState().sessions() {
            let name = session.label ?? session.name ?? "-"
            let used = formatter.string(from: Date(timeIntervalSince1970: TimeInterval(session.lastUsed)))
            let expires = session.expiresAt.map { "  expires=\(formatter.string(from: Date(timeIntervalSince1970: TimeInterval($0))))" } ?? ""
            say("\(session.client)  \(name)  \(session.url ?? "-")  perms=\(session.permissions.description.isEmpty ? "-" : session.permissions.description)  requested=\(session.requested.description.isEmpty ? "-" : session.requested.description)  last-used=\(used)\(expires)  signer=\(session.signer)")
        }
    }
}

/// The sessions `client` (pubkey hex, a prefix of at least 8 characters, or a name) names, with the user key
/// `key` (npub or hex) only when it is given.
func sessions(_ client: String, key: String?, in directory: DataDirectory, state: BunkerState) async throws -> [ClientSession] {
    var matches = try await state.sessions(matching: client)
    if let key {
        let signer = try storedKey(key, in: directory).signer.hex
        matches = matches.filter { $0.signer == signer }
    }
    guard !matches.isEmpty else { throw ValidationError("no client \(client)\(key.map { " with the key \($0)" } ?? "")") }
    return matches
}

/// The one session `client` names (with `--key` when the client is connected to several user keys).
func session(_ client: String, key: String?, in directory: DataDirectory, state: BunkerState) async throws -> ClientSession {
    let matches = try await sessions(client, key: key, in: directory, state: state)
    guard matches.count == 1, let session = matches.first else {
        let clients = Set(matches.map(\.client)).count
        throw ValidationError(clients == 1
            ? "\(client) is connected to \(matches.count) user keys; choose one with --key"
            : "\(client) names \(clients) clients; give more of the pubkey")
    }
    return session
}

struct Grant: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Set a client's permissions (replacing them).")
    @OptionGroup var directory: DataDirectory
    @Argument(help: "The client: its pubkey (hex, or 8+ leading characters) or name.") var client: String
    @Argument(help: "Permissions, comma-separated; \"all\" for every one.") var perms: String
    @Option(help: "The user key (npub or hex) whose session it is, when the client is connected to several.") var key: String?

    func run() async throws {
        let state = try directory.openState()
        let found = try await session(client, key: key, in: directory, state: state)
        let permissions = perms == "all" ? Permissions.all : try Permissions(parsing: perms)
        guard let granted = try await state.updateSession(signer: found.signer, client: found.client, { $0.permissions = permissions }) else {
            throw ValidationError("the session ended meanwhile")
        }
        say("\(granted.client) perms=\(granted.permissions)")
    }
}

struct Revoke: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "End a client's session (with every user key it is connected to, unless --key picks one); it must connect again with a new secret.")
    @OptionGroup var directory: DataDirectory
    @Argument(help: "The client: its pubkey (hex, or 8+ leading characters) or name.") var client: String
    @Option(help: "Only its session with this user key (npub or hex).") var key: String?

    func run() async throws {
        let state = try directory.openState()
        let found = try await sessions(client, key: key, in: directory, state: state)
        guard Set(found.map(\.client)).count == 1 else {
            throw ValidationError("\(client) names \(Set(found.map(\.client)).count) clients; give more of the pubkey")
        }
        for session in found {
            try await state.remove(signer: session.signer, client: session.client)
            say("revoked \(session.client)  signer=\(session.signer)")
        }
    }
}

struct Audit: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Show the audit log, newest first: time, client, method, kind, decision, latency (never content).")
    @OptionGroup var directory: DataDirectory
    @Option(help: "How many records.") var limit = 50
    @Option(help: "Only this client (pubkey hex).") var client: String?

    func run() async throws {
        let formatter = ISO8601DateFormatter()
        let state = try directory.openState()
        var before: Int64?
        var shown = 0
        // Pages back until `limit` matching records are shown or the log ends.
        while shown < limit {
            let page = try await state.auditRecords(limit: 500, before: before)
            guard let last = page.last else { break }
            before = last.sequence
            for (_, record) in page where client.map({ record.client.hasPrefix($0.lowercased()) }) ?? true {
                let time = formatter.string(from: Date(timeIntervalSince1970: TimeInterval(record.time)))
                let kind = record.kind.map { " kind=\($0)" } ?? ""
                say("\(time)  \(record.client)  \(record.method)\(kind)  \(record.decision)  \(String(format: "%.1f", record.latency)) ms  signer=\(record.signer)")
                shown += 1
                if shown == limit { break }
            }
        }
    }
}

struct Connect: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Accept a client's nostrconnect:// URI: the running `bunker serve` answers it on the client's relays and serves the client there from then on.")
    @OptionGroup var directory: DataDirectory
    @Option(help: "The user key (npub or hex); the first one by default.") var key: String?
    @Option(help: "Permissions granted, comma-separated; all by default. What the URI's perms ask for is recorded, not granted.")
    var perms: String?
    @Option(help: "A label for the connection, shown by `bunker clients`.") var label: String?
    @Option(help: "Seconds to wait for the running daemon.") var timeout = 30
    @Argument(help: "nostrconnect://<client pubkey>?relay=…&secret=…") var uri: String

    func run() async throws {
        let parsed: NostrConnectURI
        do {
            parsed = try NostrConnectURI(uri)
        } catch {
            throw ValidationError("\(error)")
        }
        let (_, signer) = try storedKey(key, in: directory)
        let permissions = try perms.map { $0 == "all" ? .all : try Permissions(parsing: $0) } ?? .all
        let state = try directory.openState()
        guard await ServeLock.isHeld(in: directory.url) else {
            throw ValidationError("no `bunker serve --data-dir \(directory.path)` is running: it is what answers the client")
        }
        try await state.requestConnect(
            PendingConnect(uri: uri, signer: signer.hex, permissions: permissions, label: label, createdAt: Int64(Date().timeIntervalSince1970)),
            client: parsed.client)
        let deadline = ContinuousClock.now + .seconds(max(1, timeout))
        var outcome: String?
        while outcome == nil {
            if ContinuousClock.now >= deadline {
                // Atomically: an answer that lands now is taken, else the daemon finds the request gone and
                // removes the session it may have made.
                outcome = try await state.abandonConnectRequest(for: parsed.client)
                if outcome == nil { throw ValidationError("no answer within \(timeout) s: is `bunker serve --data-dir \(directory.path)` running?") }
                break
            }
            outcome = try await state.connectRequest(for: parsed.client)?.outcome
            if outcome == nil { try await Task.sleep(for: .milliseconds(100)) }
        }
        try await state.removeConnectRequest(for: parsed.client)
        guard outcome == "connected" else { throw ValidationError(outcome ?? "no answer") }
        say("connected \(parsed.client.hex)\(parsed.name.map { " (\($0))" } ?? "") on \(parsed.relays.map(\.string).joined(separator: " "))")
    }
}

struct ApprovalsCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "approvals",
        abstract: "List the requests waiting for the operator's decision (auth challenges; `serve --http` only).")
    @OptionGroup var directory: DataDirectory

    func run() async throws {
        let now = Int64(Date().timeIntervalSince1970)
        for approval in try await directory.openState().pendingApprovals() where approval.decision == nil && approval.expiresAt > now {
            let client = approval.clientName.map { "\($0) (\(approval.client.prefix(16))…)" } ?? approval.client
            say("\(approval.id)  \(client)  \(approval.method)  needs \(approval.permission)  expires in \(approval.expiresAt - now) s")
            if let event = approval.event {
                for line in event.split(separator: "\n", omittingEmptySubsequences: false) { say("    \(line)") }
            }
        }
    }
}

struct Approve: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Approve a waiting request (its id, or a unique prefix of at least 8 characters, from `bunker approvals`).")
    @OptionGroup var directory: DataDirectory
    @Argument(help: "The request's id (or a unique prefix of at least 8 characters).") var id: String
    @Flag(help: "Grant the permission from now on, not only for this request.") var always = false

    func run() async throws {
        guard try await directory.openState().decideApproval(id, always ? .always : .once) else {
            throw ValidationError("no waiting request matches \(id) (see `bunker approvals`)")
        }
        say(always ? "approved; granted from now on" : "approved once")
    }
}

struct Deny: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Deny a waiting request (its id, or a unique prefix of at least 8 characters, from `bunker approvals`).")
    @OptionGroup var directory: DataDirectory
    @Argument(help: "The request's id (or a unique prefix of at least 8 characters).") var id: String

    func run() async throws {
        guard try await directory.openState().decideApproval(id, .deny) else {
            throw ValidationError("no waiting request matches \(id) (see `bunker approvals`)")
        }
        say("denied")
    }
}
