import Foundation
public import Hummingbird
import NostrCrypto
import NostrRelay
import Synchronization

/// Auth challenges: a request outside a client's grant waits while a person decides on a page of the bunker's
/// HTTP listener — approve once, approve always (the permission is granted), or deny.
///
/// The client is sent a challenge's URL (an unguessable id), so knowing it must not be enough to decide: the
/// pages show and take decisions only for the operator, signed in with the operator token (`POST /auth/login`
/// starts a sign-in session: a random id in an HttpOnly, SameSite=Lax cookie, kept in memory, so it ends with
/// the process), and each decision must also carry the form token that only its page carries, so another
/// origin's page cannot post one through the operator's browser. The page may not be framed.
public final class Approvals: Sendable {
    public enum Decision: String, Sendable {
        case once, always, deny
    }

    /// What the page shows.
    public struct Challenge: Sendable {
        public let id: String
        let formToken: String
        public let client: String
        public let clientName: String?
        public let user: String
        public let method: String
        public let permission: String
        /// What the request would do: the event to sign, pretty-printed, or the peer to encrypt or decrypt for.
        public let event: String?
        let created: ContinuousClock.Instant
    }

    struct Pending {
        var challenge: Challenge
        var waiter: CheckedContinuation<Decision?, Never>?
        var decision: Decision?
    }

    private let pending = Mutex<[String: Pending]>([:])
    /// Set by ``stop()``: the bunker is stopping, and no challenge waits for a decision any more.
    private let stopped = Mutex(false)
    private let base = Mutex<String?>(nil)
    /// How long a challenge waits for a decision.
    public let timeout: Duration
    /// Open challenges at most (a client cannot flood the operator's page).
    public let capacity: Int
    /// Open challenges of one client at most: kept below the runtime's per-sender concurrency, so that a client
    /// waiting on the operator can still have its granted requests answered.
    public let capacityPerClient: Int
    /// What the operator signs in to the pages with (the bunker keeps it in its data directory).
    private let operatorToken: [UInt8]
    static let cookieName = "bunker_operator"
    /// Sign-in sessions (their cookie's value) and when each ends; never more than ``maximumSessions``.
    private let sessions = Mutex<[String: ContinuousClock.Instant]>([:])
    static let sessionLifetime: Duration = .seconds(30 * 86_400)
    static let maximumSessions = 64

    /// - Parameter operatorToken: The secret the operator signs in to the pages with: at least 32 characters
    ///   (``newOperatorToken()`` makes one).
    public init(timeout: Duration = .seconds(300), capacity: Int = 100, capacityPerClient: Int = 4, operatorToken: String) {
        self.timeout = timeout
        self.capacity = capacity
        self.capacityPerClient = max(1, capacityPerClient)
        precondition(operatorToken.utf8.count >= 32, "an operator token has at least 32 characters")
        self.operatorToken = Array(operatorToken.utf8)
    }

    /// A fresh operator token: 32 random bytes, hex.
    public static func newOperatorToken() -> String {
        Hex.encode(SecureMemory.randomBytes(32))
    }

    /// Starts a sign-in session and returns its id (the cookie's value).
    func signIn() -> String {
        let id = Hex.encode(SecureMemory.randomBytes(32))
        let now = ContinuousClock.now
        sessions.withLock { sessions in
            sessions = sessions.filter { $0.value > now }
            if sessions.count >= Self.maximumSessions, let oldest = sessions.min(by: { $0.value < $1.value })?.key {
                sessions[oldest] = nil
            }
            sessions[id] = now + Self.sessionLifetime
        }
        return id
    }

    /// Whether `request` carries the cookie of a sign-in session that has not ended.
    func isSignedIn(_ request: Request) -> Bool {
        guard let given = request.cookies[Self.cookieName]?.value else { return false }
        let now = ContinuousClock.now
        // Each id is compared in constant time (they are few), so a guess learns nothing from the timing.
        return sessions.withLock { sessions in
            sessions.contains { Self.equal(Array($0.key.utf8), Array(given.utf8)) && $0.value > now }
        }
    }

    /// The path the sign-in cookie is sent for: the pages' own, under the base URL's path (a reverse proxy's
    /// prefix, say).
    var cookiePath: String {
        let prefix = baseURL.flatMap { URL(string: $0)?.path } ?? ""
        return (prefix.hasSuffix("/") ? String(prefix.dropLast()) : prefix) + "/auth"
    }

    /// Whether `given` is the operator token (compared in constant time).
    func isOperatorToken(_ given: String?) -> Bool {
        guard let given else { return false }
        return Self.equal(operatorToken, Array(given.utf8))
    }

    static func equal(_ expected: [UInt8], _ given: [UInt8]) -> Bool {
        expected.count == given.count
            && expected.withUnsafeBytes { a in given.withUnsafeBytes { b in SecureMemory.constantTimeEqual(a, b) } }
    }

    /// Where challenges are served, e.g. `http://127.0.0.1:8080` (set once the listener is up); until then,
    /// requests outside a grant are refused.
    public var baseURL: String? {
        get { base.withLock { $0 } }
        set { base.withLock { $0 = newValue.map { $0.hasSuffix("/") ? String($0.dropLast()) : $0 } } }
    }

    /// Opens a challenge and returns its id and URL, or nil when challenges cannot be served now (no listener,
    /// or too many open).
    func open(client: String, clientName: String?, user: String, method: String, permission: String, event: String?) -> (id: String, url: String)? {
        guard let base = baseURL else { return nil }
        let challenge = Challenge(
            id: Hex.encode(SecureMemory.randomBytes(16)), formToken: Hex.encode(SecureMemory.randomBytes(16)),
            client: client, clientName: clientName, user: user, method: method, permission: permission, event: event,
            created: .now)
        let opened = pending.withLock { pending -> Bool in
            guard pending.count < capacity,
                pending.values.count(where: { $0.challenge.client == client && $0.decision == nil }) < capacityPerClient
            else { return false }
            pending[challenge.id] = Pending(challenge: challenge)
            return true
        }
        // Opened as the bunker stops: closed again at once (``stop()`` may have looked before it was there).
        if opened && isStopped { settle(challenge.id, nil) }
        return opened ? (challenge.id, "\(base)/auth/\(challenge.id)") : nil
    }

    /// Ends every wait for a decision, now and from now on: the bunker is stopping, and requests waiting for the
    /// operator are answered as cut off (their clients may send them again to the next run) instead of holding
    /// up the shutdown.
    public func stop() {
        stopped.withLock { $0 = true }
        for id in pending.withLock({ Array($0.keys) }) { settle(id, nil) }
    }

    /// Whether ``stop()`` was called.
    public var isStopped: Bool { stopped.withLock { $0 } }

    /// Waits for the decision on challenge `id`; nil when none came within ``timeout`` or the wait was
    /// cancelled. The challenge is closed afterwards.
    func decision(_ id: String) async -> Decision? {
        let timer = Deadlines.shared.schedule(at: .now + timeout) { [weak self] in self?.settle(id, nil) }
        defer {
            Deadlines.shared.cancel(timer)
            _ = pending.withLock { $0.removeValue(forKey: id) }
        }
        return await withTaskCancellationHandler {
            await withCheckedContinuation { continuation in
                let ready = pending.withLock { pending -> Decision?? in
                    guard var entry = pending[id] else { return .some(nil) }
                    if let decision = entry.decision { return .some(decision) }
                    entry.waiter = continuation
                    pending[id] = entry
                    return .none
                }
                if let ready { continuation.resume(returning: ready) }
            }
        } onCancel: {
            self.settle(id, nil)
        }
    }

    /// Records `decision` for challenge `id` when `formToken` is its page's token; false otherwise.
    func decide(_ id: String, formToken: String, _ decision: Decision) -> Bool {
        let valid = pending.withLock { pending in
            guard let entry = pending[id], entry.decision == nil else { return false }
            return Self.equal(Array(entry.challenge.formToken.utf8), Array(formToken.utf8))
        }
        return valid && settle(id, decision)
    }

    /// Approves, once, the open challenges of `client` for `user` that need `permission` (just granted for good).
    func approveOthers(client: String, user: String, permission: String) {
        let ids = pending.withLock { pending in
            pending.values.filter {
                $0.decision == nil && $0.challenge.client == client && $0.challenge.user == user && $0.challenge.permission == permission
            }.map(\.challenge.id)
        }
        for id in ids { settle(id, .once) }
    }

    /// Records `decision` for challenge `id`, decided through the store by someone with the data directory.
    func settleFromStore(_ id: String, _ decision: Decision) {
        settle(id, decision)
    }

    @discardableResult
    private func settle(_ id: String, _ decision: Decision?) -> Bool {
        let waiter = pending.withLock { pending -> CheckedContinuation<Decision?, Never>?? in
            guard var entry = pending[id], entry.decision == nil else { return .none }
            entry.decision = decision
            let waiter = entry.waiter
            entry.waiter = nil
            pending[id] = decision == nil ? nil : entry
            return .some(waiter)
        }
        guard let waiter else { return false }
        waiter?.resume(returning: decision)
        return true
    }

    func challenge(_ id: String) -> Challenge? {
        pending.withLock { $0[id].flatMap { $0.decision == nil ? $0.challenge : nil } }
    }

    /// Open challenges.
    public var count: Int { pending.withLock { $0.count } }

    // MARK: The pages

    /// Adds `GET /auth/:id` (the page), `POST /auth/:id` (the decision) and `POST /auth/login` (the operator's
    /// sign-in) to `router`.
    public func addRoutes<Context: RequestContext>(to router: Router<Context>) {
        router.post("/auth/login") { [self] request, _ -> Response in
            guard self.acceptsOrigin(of: request) else { return Self.misdirected }
            let body = try await request.body.collect(upTo: 4096)
            guard let form = try? URLEncodedFormDecoder().decode(LoginForm.self, from: String(buffer: body)) else {
                return Self.page(.badRequest, "Bad request", "<p>The form was not understood.</p>")
            }
            // Back to the request's page (a path relative to this one, so a proxy's prefix stays), and nowhere else.
            let next = form.next.flatMap { $0.count == 32 && $0.allSatisfy({ $0.isASCII && $0.isHexDigit }) ? $0 : nil }
            guard self.isOperatorToken(form.token) else {
                return Self.page(.forbidden, "Not signed in", "<p>That is not the operator token.</p>" + Self.login(next: form.next))
            }
            var response = Self.page(.ok, "Signed in", next.map { "<p><a href=\"\(Self.escape($0))\">Continue to the request</a></p>" } ?? "<p>You can open approval links now.</p>", refresh: next)
            // Lax, not Strict: a client's web page opens the approval link from its own site, and the operator should
            // find themselves signed in there; a cross-site form post still carries no cookie (and no form token).
            let secure = self.baseURL?.lowercased().hasPrefix("https://") == true
            response.setCookie(Cookie(
                name: Self.cookieName, value: self.signIn(), maxAge: Int(Self.sessionLifetime.components.seconds), path: self.cookiePath,
                secure: secure, httpOnly: true, sameSite: .lax))
            return response
        }
        router.get("/auth/:id") { [self] request, context -> Response in
            guard self.acceptsOrigin(of: request) else { return Self.misdirected }
            guard self.isSignedIn(request) else {
                return Self.page(.unauthorized, "Sign in", Self.login(next: context.parameters.get("id")))
            }
            guard let id = context.parameters.get("id"), let challenge = self.challenge(id) else {
                return Self.page(.notFound, "Nothing to approve", "<p>This request was already decided, or it expired.</p>")
            }
            return Self.page(.ok, "Approve a request?", Self.form(challenge))
        }
        router.post("/auth/:id") { [self] request, context -> Response in
            guard self.acceptsOrigin(of: request) else { return Self.misdirected }
            guard self.isSignedIn(request) else {
                return Self.page(.unauthorized, "Sign in", Self.login(next: context.parameters.get("id")))
            }
            let body = try await request.body.collect(upTo: 4096)
            guard let id = context.parameters.get("id"),
                let form = try? URLEncodedFormDecoder().decode(DecisionForm.self, from: String(buffer: body)),
                let decision = Decision(rawValue: form.decision)
            else { return Self.page(.badRequest, "Bad request", "<p>The form was not understood.</p>") }
            guard self.decide(id, formToken: form.token, decision) else {
                return Self.page(.forbidden, "Not accepted", "<p>This request was already decided, expired, or the form is not the one this page served.</p>")
            }
            let outcome = switch decision {
            case .once: "Approved once. The signer answers the client now."
            case .always: "Approved, and granted from now on. The signer answers the client now."
            case .deny: "Denied. The client gets an error."
            }
            return Self.page(.ok, "Done", "<p>\(Self.escape(outcome))</p>")
        }
    }

    /// Whether `request` came to this listener under a name its links use (the base URL's host, or a loopback
    /// address), and a form from a page of that same listener. A client's web page that rebinds its own domain
    /// to 127.0.0.1 reaches the listener under that domain, so it can neither read the page nor post to it.
    func acceptsOrigin(of request: Request) -> Bool {
        guard let authority = request.head.authority, Self.isOwnHost(authority, base: baseURL) else { return false }
        // A browser sends `Origin: null` for the page's own form (the page sets no-referrer): the Host check above
        // already keeps a rebound name out.
        guard let origin = request.headers[.origin], origin != "null" else { return true }
        guard let url = URL(string: origin), let host = url.host else { return false }
        return Self.isOwnHost(url.port.map { "\(host):\($0)" } ?? host, base: baseURL)
    }

    /// `authority` (host, and port if any) is the base URL's, or a loopback address.
    static func isOwnHost(_ authority: String, base: String?) -> Bool {
        let lowered = authority.lowercased()
        if let base, let url = URL(string: base), let host = url.host?.lowercased() {
            let own = url.port.map { "\(host):\($0)" } ?? host
            let bracketed = host.contains(":") ? url.port.map { "[\(host)]:\($0)" } ?? "[\(host)]" : own
            if lowered == own || lowered == bracketed { return true }
        }
        let host: Substring
        if lowered.hasPrefix("[") {
            host = lowered.prefix { $0 != "]" }.dropFirst()
        } else {
            host = lowered.split(separator: ":", maxSplits: 1).first ?? ""
        }
        return host == "127.0.0.1" || host == "localhost" || host == "::1"
    }

    static var misdirected: Response {
        page(.misdirectedRequest, "Wrong address", "<p>Open this page at the address the bunker gave.</p>")
    }

    /// The decision form's fields.
    struct DecisionForm: Decodable {
        var token: String
        var decision: String
    }

    /// The sign-in form's fields: the operator token, and the request to go back to.
    struct LoginForm: Decodable {
        var token: String
        var next: String?
    }

    static func login(next: String?) -> String {
        let back = next.map { "<input type=\"hidden\" name=\"next\" value=\"\(escape($0))\">" } ?? ""
        return """
            <p>Only the bunker's operator decides here. Sign in with the operator token: the file
            <code>approval.token</code> in the bunker's data directory, on its server. (Or decide there, in a
            terminal: <code>bunker approvals</code>.)</p>
            <form method="post" action="login">
            <input type="password" name="token" autocomplete="current-password" size="70">
            \(back)
            <button>Sign in</button>
            </form>
            """
    }

    static func form(_ challenge: Challenge) -> String {
        var rows = [
            ("Client", challenge.clientName.map { "\($0) (\(challenge.client))" } ?? challenge.client),
            ("User key", challenge.user),
            ("Method", challenge.method),
            ("Permission needed", challenge.permission),
        ].map { "<tr><th>\(escape($0.0))</th><td><code>\(escape($0.1))</code></td></tr>" }.joined()
        if let event = challenge.event {
            rows += "<tr><th>\(challenge.method == "sign_event" ? "Event" : "Details")</th><td><pre>\(escape(event))</pre></td></tr>"
        }
        let buttons = [("once", "Approve once"), ("always", "Approve always"), ("deny", "Deny")].map {
            "<button name=\"decision\" value=\"\($0.0)\">\($0.1)</button> "
        }.joined()
        return """
            <table>\(rows)</table>
            <form method="post">
            <input type="hidden" name="token" value="\(escape(challenge.formToken))">
            \(buttons)
            </form>
            """
    }

    /// A page; `refresh`: a same-origin path the browser moves on to at once.
    static func page(_ status: HTTPResponse.Status, _ title: String, _ body: String, refresh: String? = nil) -> Response {
        let moveOn = refresh.map { "<meta http-equiv=\"refresh\" content=\"0; url=\(escape($0))\">" } ?? ""
        let html = """
            <!doctype html>
            <html><head><meta charset="utf-8">\(moveOn)<title>bunker: \(escape(title))</title>
            <style>body{font-family:sans-serif;max-width:48em;margin:2em auto}th{text-align:left;padding-right:1em;vertical-align:top}pre{white-space:pre-wrap;word-break:break-all}button{margin:1em .5em 0 0;padding:.5em 1em}</style>
            </head><body><h1>\(escape(title))</h1>
            \(body)
            </body></html>

            """
        return Response(
            status: status,
            headers: [
                .contentType: "text/html; charset=utf-8",
                .contentSecurityPolicy: "default-src 'none'; style-src 'unsafe-inline'; form-action 'self'; frame-ancestors 'none'",
                .init("X-Frame-Options")!: "DENY",
                .cacheControl: "no-store",
                .init("Referrer-Policy")!: "no-referrer",
            ],
            body: ResponseBody(byteBuffer: ByteBuffer(string: html)))
    }

    static func escape(_ text: String) -> String {
        var out = ""
        out.reserveCapacity(text.utf8.count)
        for character in text {
            switch character {
            case "&": out += "&amp;"
            case "<": out += "&lt;"
            case ">": out += "&gt;"
            case "\"": out += "&quot;"
            case "'": out += "&#39;"
            default: out.append(character)
            }
        }
        return out
    }
}

/// An open auth challenge as the store keeps it, so that `bunker approvals`, `approve` and `deny` can decide it
/// from a terminal on the server (the running `serve` applies the decision within a quarter of a second).
public struct PendingApproval: Codable, Sendable, Hashable {
    public var id: String
    public var client: String
    public var clientName: String?
    public var user: String
    public var method: String
    public var permission: String
    /// The event to sign, as the page shows it (`sign_event` only).
    public var event: String?
    public var createdAt: Int64
    public var expiresAt: Int64
    /// Set by the CLI; the daemon applies it and removes the record.
    public var decision: String?

    enum CodingKeys: String, CodingKey {
        case id, client, method, permission, event, user, decision
        case clientName = "client_name"
        case createdAt = "created_at"
        case expiresAt = "expires_at"
    }
}

extension BunkerState {
    static let approvals = "bunker.approvals"

    func recordApproval(_ approval: PendingApproval) async throws {
        try await store.setValue(Array(try JSONEncoder().encode(approval)), forKey: approval.id, in: Self.approvals)
    }

    func removeApproval(_ id: String) async throws {
        try await store.setValue(nil, forKey: id, in: Self.approvals)
    }

    /// The open challenges, oldest first.
    public func pendingApprovals() async throws -> [PendingApproval] {
        try await store.values(in: Self.approvals).values
            .compactMap { try? JSONDecoder().decode(PendingApproval.self, from: Data($0)) }
            .sorted { ($0.createdAt, $0.id) < ($1.createdAt, $1.id) }
    }

    /// The shortest prefix of a challenge id that `decideApproval` takes: a decision must name the challenge the
    /// operator read, not whichever one a short prefix happens to match by then.
    public static let minimumApprovalPrefix = 8

    /// Records the operator's decision on challenge `id` (a unique prefix of it, at least
    /// ``minimumApprovalPrefix`` characters, will do); false when no open challenge matches.
    public func decideApproval(_ id: String, _ decision: Approvals.Decision) async throws -> Bool {
        let now = Int64(Date().timeIntervalSince1970)
        guard id.count >= Self.minimumApprovalPrefix else { return false }
        let matches = try await pendingApprovals().filter { $0.id.hasPrefix(id) && $0.decision == nil && $0.expiresAt > now }
        guard matches.count == 1, let id = matches.first?.id else { return false }
        // Atomically: the daemon removes a challenge that times out, and a decision must not bring it back.
        let decided = try await store.updateValue(forKey: id, in: Self.approvals) { current in
            guard let current, var approval = try? JSONDecoder().decode(PendingApproval.self, from: Data(current)), approval.decision == nil
            else { return current }
            approval.decision = decision.rawValue
            return Array(try JSONEncoder().encode(approval))
        }
        return decided.flatMap { try? JSONDecoder().decode(PendingApproval.self, from: Data($0)) }?.decision == decision.rawValue
    }

    /// Forgets every recorded challenge (at start: those of an earlier run can no longer be answered).
    public func clearApprovals() async throws {
        for id in try await store.values(in: Self.approvals).keys { try await removeApproval(id) }
    }
}

extension Approvals {
    /// Applies the decisions the CLI records in `state` to the open challenges, every `interval`, until
    /// cancelled.
    public func followDecisions(in state: BunkerState, every interval: Duration = .milliseconds(250)) async {
        while !Task.isCancelled {
            if let recorded = try? await state.pendingApprovals() {
                for approval in recorded {
                    guard let text = approval.decision, let decision = Decision(rawValue: text) else { continue }
                    settleFromStore(approval.id, decision)
                }
            }
            try? await Task.sleep(for: interval)
        }
    }
}
