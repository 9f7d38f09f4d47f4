import ArgumentParser
import Foundation
import Logging
import NostrCore
import NostrCrypto
import NostrRelay
import NostrService
import WalletKit

@main
struct WalletBridgeCommand: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        commandName: "wallet-bridge",
        abstract: "A NIP-47 (Nostr Wallet Connect) wallet service: apps pay and receive through a Lightning wallet over relays.",
        discussion: """
            Each connection gets its own wallet key (derived from DIR/master.key), its methods, an optional \
            budget per period and an optional expiry. Connections, invoices, payments and ledger accounts are \
            in DIR/wallet.sqlite, the request journal in DIR/service.sqlite (or both in PostgreSQL with \
            --postgres, for replicas); the commands below work while `serve` runs.

            Backends: the built-in ledger (default) keeps an account per connection and pays between its own \
            invoices instantly; it is not a Lightning node and cannot pay other invoices. LNbits (--backend \
            lnbits) pays and receives through a real LNbits wallet.
            """,
        subcommands: [Serve.self, Connect.self, Connections.self, Revoke.self, Ledger.self])
}

struct DataDirectory: ParsableArguments {
    @Option(name: .customLong("data-dir"), help: "The wallet service's data directory.")
    var path = "./wallet-data"

    @Option(help: ArgumentHelp(
        "Keep connections, payments and the journal in this PostgreSQL database (postgres://user:pass@host:port/db) instead of SQLite files, so that several replicas can share them. Defaults to WALLET_BRIDGE_POSTGRES.",
        valueName: "URL"))
    var postgres: String?

    var url: URL { URL(fileURLWithPath: path) }

    var postgresURL: String? { postgres ?? ProcessInfo.processInfo.environment["WALLET_BRIDGE_POSTGRES"] }

    /// Creates the directory (0700) if needed.
    func create() throws {
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true, attributes: [.posixPermissions: 0o700])
    }

    /// The master key: created on first use. Stored as NIP-49 `ncryptsec` when WALLET_BRIDGE_PASSPHRASE is
    /// set, else as hex; mode 0600 either way.
    func masterKey() throws -> WalletKeys {
        try create()
        return WalletKeys(master: try KeyFile(url: url.appendingPathComponent("master.key"), passphraseVariable: "WALLET_BRIDGE_PASSPHRASE").loadOrCreate())
    }

    /// The relays `serve` uses, as it recorded them.
    func recordedRelays() throws -> [RelayURL] {
        let file = url.appendingPathComponent("relays.json")
        guard let data = try? Data(contentsOf: file) else {
            throw ValidationError("no relays recorded yet: start `wallet-bridge serve` first, or pass --relay")
        }
        return try JSONDecoder().decode([String].self, from: data).map { try RelayURL($0) }
    }

    func recordRelays(_ relays: [RelayURL]) throws {
        try create()
        try JSONEncoder().encode(relays.map(\.string)).write(to: url.appendingPathComponent("relays.json"), options: .atomic)
    }
}

/// Prints a line at once, with control characters escaped: it may carry text a client chose.
func say(_ line: String) {
    FileHandle.standardOutput.write(Data((line.escapingControlCharacters + "\n").utf8))
}

struct Connect: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "Create a connection and print its nostr+walletconnect:// URI (shown once; its secret is not kept).",
        discussion: """
            A running `serve` starts serving the connection without a restart. The URI is printed once it does: \
            when a relay has the connection's info event (kind 13194), which `serve` publishes only after its \
            relays have registered the subscription for the new wallet key, so an app may send its first request \
            at once. With no `serve` running on DIR (and no --postgres, whose replicas may run elsewhere) it is \
            printed at once, and served from the next start.
            """)

    @OptionGroup var directory: DataDirectory
    @Option(help: "A name for the connection (unique among live ones).") var name: String
    @Option(help: "A relay for the URI (repeat for several); default: the relays `serve` uses.") var relay: [String] = []
    @Option(help: "Methods granted, comma-separated (default: the core methods and notifications; add pay_keysend or the hold-invoice methods where the backend has them). get_info and get_budget are always allowed.")
    var methods: String?
    @Option(help: "Spending limit in msat per period (amounts plus fees). A connection that may pay needs one, or --unlimited.")
    var budget: Int64?
    @Flag(help: "Let a connection that may pay spend without a budget (with LNbits, up to the whole wallet's balance).")
    var unlimited = false
    @Option(help: "When the budget renews: daily, weekly, monthly, yearly or never (calendar periods in UTC).") var period: String = "monthly"
    @Option(name: .customLong("expires-at"), help: "Unix time after which the connection is refused.") var expiresAt: Int64?
    @Option(help: "Seconds to wait for a running `serve` to announce the connection before printing its URI anyway (0: do not wait).")
    var wait = 30

    func run() async throws {
        let relays = try relay.isEmpty ? directory.recordedRelays() : relay.map { try RelayURL($0) }
        guard !relays.isEmpty else { throw ValidationError("no relays: pass --relay") }
        let granted = try methods.map(parseMethods) ?? Set(NIP47.coreMethods + ["notifications"])
        var limit: Budget?
        let pays = !granted.isDisjoint(with: NIP47.payingMethods)
        if pays && budget == nil && !unlimited {
            throw ValidationError("a connection that may pay needs --budget MSAT (or --unlimited to spend without one)")
        }
        if unlimited && budget != nil { throw ValidationError("--unlimited and --budget exclude each other") }
        if let budget {
            guard budget > 0 else { throw ValidationError("--budget must be positive") }
            guard let renewal = BudgetPeriod(rawValue: period) else {
                throw ValidationError("--period takes daily, weekly, monthly, yearly or never")
            }
            limit = Budget(msat: budget, period: renewal)
        }
        if let expiresAt, expiresAt <= .now { throw ValidationError("--expires-at is in the past") }
        let keys = try directory.masterKey()
        let stores = try await Stores.open(directory)
        defer { stores.close() }
        let client = SecretKey.generate()
        let connection = try await stores.wallet.addConnection(
            name: name, clientKey: client.publicKey, methods: granted, budget: limit, expiresAt: expiresAt, relays: relays,
            now: .now, walletKey: { try keys.walletKey($0).publicKey })
        say("connection \(connection.id) (\(connection.name))")
        if directory.postgresURL == nil, !(await ServeLock.isHeld(in: directory.url)) {
            warn("no `wallet-bridge serve` is running on \(directory.path): the connection is served once it starts")
        } else if wait > 0 {
            switch await Self.announcement(of: connection, on: relays, timeout: .seconds(wait)) {
            case .seen:
                break
            case .timedOut:
                warn("no relay had the connection's info event within \(wait) s: the app's first requests may go unanswered until `serve` announces it")
            case .refused:
                warn("every relay refused to show the connection's info event, so whether `serve` listens for it is unknown")
            }
        }
        say(WalletConnectURI(wallet: connection.walletKey, relays: relays, secret: client).description)
    }

    enum Announcement {
        case seen, timedOut, refused
    }

    /// Whether one of `relays` has (or gets, within `timeout`) an info event for `connection`, which `serve`
    /// publishes once its relays listen for the connection's requests.
    static func announcement(of connection: WalletConnection, on relays: [RelayURL], timeout: Duration) async -> Announcement {
        var logger = Logger(label: "wallet-bridge.connect")
        logger.logLevel = .warning
        let pool = RelayPool(relays: relays, logger: logger)
        // Not one an earlier database with the same master key left for the same wallet key.
        let filter = Filter(authors: [connection.walletKey], kinds: [NIP47.infoKind], since: connection.createdAt - 60)
        let found = try? await pool.withRunning {
            try await pool.withSubscription([filter]) { subscription in
                let timer = Deadlines.shared.schedule(at: .now + timeout) { subscription.stop() }
                defer { Deadlines.shared.cancel(timer) }
                var refusing = Set<RelayURL>()
                for await item in subscription {
                    switch item {
                    case .event: return Announcement.seen
                    case .closed(let relay, _):
                        refusing.insert(relay)
                        if refusing.count == Set(relays).count { return .refused }
                    case .endOfStoredEvents(let relay): refusing.remove(relay)
                    }
                }
                return .timedOut
            }
        }
        return found ?? .timedOut
    }
}

/// Prints a warning on standard error.
func warn(_ line: String) {
    FileHandle.standardError.write(Data(("warning: " + line.escapingControlCharacters + "\n").utf8))
}

func parseMethods(_ text: String) throws -> Set<String> {
    let known = Set(NIP47.coreMethods + NIP47.optionalMethods + ["notifications"])
    let names = text.split(whereSeparator: { $0 == "," || $0 == " " }).map(String.init)
    for name in names where !known.contains(name) {
        throw ValidationError("unknown method \(name); known: \(known.sorted().joined(separator: ", "))")
    }
    return Set(names)
}

struct Connections: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "List connections: id, name, status, budget, balance, methods.")
    @OptionGroup var directory: DataDirectory

    func run() async throws {
        let stores = try await Stores.open(directory)
        defer { stores.close() }
        let now = Timestamp.now
        for connection in try await stores.wallet.connections() {
            let status = connection.revokedAt != nil ? "revoked" : connection.isLive(at: now) ? "live" : "expired"
            var budget = "budget=none"
            if let limit = connection.budget {
                let used = try await stores.wallet.spent(connection: connection.id, since: limit.period.start(containing: now))
                budget = "budget=\(used)/\(limit.msat)msat/\(limit.period.rawValue)"
            }
            let expires = connection.expiresAt.map { " expires-at=\($0)" } ?? ""
            say("\(connection.id)  \(connection.name)  \(status)  \(budget)  ledger-balance=\(connection.balanceMsat)msat\(expires)  wallet=\(connection.walletKey.hex)  methods=\(connection.methods.sorted().joined(separator: ","))")
        }
    }
}

struct Revoke: AsyncParsableCommand {
    static let configuration = CommandConfiguration(abstract: "Revoke a connection: its requests are refused as UNAUTHORIZED from now on.")
    @OptionGroup var directory: DataDirectory
    @Argument(help: "The connection's id or name.") var connection: String

    func run() async throws {
        let stores = try await Stores.open(directory)
        defer { stores.close() }
        guard let revoked = try await stores.wallet.revoke(idOrName: connection, now: .now) else {
            throw ValidationError("no live connection \(connection)")
        }
        say("revoked \(revoked.id) (\(revoked.name))")
    }
}

struct Ledger: AsyncParsableCommand {
    static let configuration = CommandConfiguration(
        abstract: "The built-in ledger's accounts (development and tests).", subcommands: [Credit.self])

    struct Credit: AsyncParsableCommand {
        static let configuration = CommandConfiguration(abstract: "Add msat to a connection's ledger account.")
        @OptionGroup var directory: DataDirectory
        @Argument(help: "The connection's id or name.") var connection: String
        @Argument(help: "Millisatoshis to add.") var msat: Int64

        func run() async throws {
            guard msat > 0 else { throw ValidationError("the amount must be positive") }
            let stores = try await Stores.open(directory)
            defer { stores.close() }
            guard let found = try await stores.wallet.connection(idOrName: connection) else {
                throw ValidationError("no connection \(connection)")
            }
            let balance = try await stores.wallet.credit(connection: found.id, msat: msat)
            say("\(found.id) (\(found.name)) balance \(balance) msat")
        }
    }
}
