/// DNS discovery: host-name backends (`address: redis.internal:6379`, A/AAAA records) and SRV records
/// (`discovery: {srv: _redis._tcp.cache.internal}`), on the engine's main loop, never blocking it.
///
/// A and AAAA go through libevent's evdns (`DNSResolver`), whose callbacks give each answer's TTL. evdns
/// cannot ask for SRV records, so SRV queries use this project's own small DNS message codec
/// (`DNSMessage`, in the pure core) over a connected UDP socket (`Datagram`) on the same loop, rather than
/// c-ares: c-ares would be a second system library with its own descriptor and timer integration to drive
/// from libevent, for one record type; the codec is a few hundred lines, pure, unit-tested against byte
/// fixtures and hostile input, and its queries are plain events of the loop every other part already uses.
import EventLoop
import FulcrumCore
import Logging

/// The resolvers every DNS source of the process shares: the evdns resolver for addresses and the SRV
/// client's name servers, both from `dns:` (or `/etc/resolv.conf` when `dns.servers` is empty). One per
/// configuration; when `dns:` changes on reload, stop its sources, `close()` it, and start new sources on
/// a new one: `close()` ends every query in progress without an answer, so a source left on a closed
/// service would wait forever.
///
/// A query goes to a name server and, without an answer within its share of `dns.timeout`, to the next:
/// at least two tries (one server is asked twice), at most three, so a query takes at most `timeout`.
/// evdns spreads its queries over the servers; the SRV client starts with the first each time.
final class DNSService {
    let base: EventBase
    let settings: FulcrumConfig.DNS
    /// nil when evdns could not start; `resolverProblem` says why, and every lookup fails with it.
    let resolver: DNSResolver?
    let resolverProblem: String?
    /// The name servers the SRV client asks, in order.
    let servers: [SocketAddress]
    /// Where they came from: `dns.servers` or the resolv.conf path.
    let serversSource: String
    let tries: Int
    let tryTimeout: Duration
    private let logger: Logger
    private var queries: [ObjectIdentifier: DNSQuery] = [:]
    private(set) var closed = false

    convenience init(base: EventBase, settings: FulcrumConfig.DNS, logger: Logger) {
        self.init(base: base, settings: settings, logger: logger, resolvConf: "/etc/resolv.conf")
    }

    /// `resolvConf` is read when `settings.servers` is empty.
    init(base: EventBase, settings: FulcrumConfig.DNS, logger: Logger, resolvConf: String) {
        self.base = base
        self.settings = settings
        self.logger = logger
        if settings.servers.isEmpty {
            let listed = ConfigFile.readFile(resolvConf).map { ResolvConf.nameServers(in: $0) } ?? []
            servers = listed.isEmpty ? [.ipv4((127, 0, 0, 1), port: 53)] : listed
            serversSource = resolvConf
        } else {
            servers = settings.servers
            serversSource = "dns.servers"
        }
        tries = max(2, min(servers.count, 3))
        tryTimeout = settings.timeout / tries
        DNSResolver.setLogHandler { [logger] isWarning, message in
            if isWarning { logger.warning("dns: \(message)") } else { logger.info("dns: \(message)") }
        }
        do {
            let resolver = try DNSResolver(base: base, servers: settings.servers.map(\.description), resolvConf: resolvConf,
                                           timeout: tryTimeout, attempts: tries)
            for problem in resolver.problems { logger.warning("dns: \(problem)") }
            self.resolver = resolver
            resolverProblem = nil
        } catch {
            logger.error("dns: the resolver cannot start: \(error)")
            resolver = nil
            resolverProblem = "the resolver cannot start: \(error)"
        }
        logger.debug("dns: asking \(servers.map(\.description).joined(separator: ", ")) (from \(serversSource)), \(tries) tries of \(tryTimeout.configText)")
    }

    deinit { close() }

    /// Ends every query and lookup in progress without an answer; the service answers no more.
    func close() {
        guard !closed else { return }
        closed = true
        let pending = queries.values
        queries = [:]
        for query in pending { query.cancel() }
        resolver?.close()
    }

    /// The addresses of `host` in `family` (both: IPv4 and IPv6 together), ports 0, deduplicated, in a
    /// stable order. Completes once, on the loop, never from inside this call, unless cancelled.
    func lookUp(_ host: String, family: FulcrumConfig.DNS.Family,
                completion: @escaping (Result<HostAnswer, DNSResolver.Failure>) -> Void) -> HostLookup {
        HostLookup(service: self, host: host, family: family, completion: completion)
    }

    /// One query over UDP with this project's codec (SRV): the response when it says NOERROR, `.noSuchName`
    /// for NXDOMAIN, or a failure once every try timed out or was refused. Completes once, on the loop,
    /// never from inside this call, unless cancelled.
    func query(_ name: String, type: DNSMessage.RecordType,
               completion: @escaping (Result<DNSMessage, DNSResolver.Failure>) -> Void) -> DNSQuery {
        let query = DNSQuery(service: self, name: name, type: type, completion: completion)
        if !closed { queries[ObjectIdentifier(query)] = query }
        query.start()
        return query
    }

    func forget(_ query: DNSQuery) {
        queries.removeValue(forKey: ObjectIdentifier(query))
    }
}

/// A host's addresses (ports 0) and the least TTL of their records; with no records, the TTL of the
/// negative answer (0 when the server gave none).
struct HostAnswer: Equatable {
    var addresses: [SocketAddress]
    var ttlSeconds: Int
}

/// The A and/or AAAA lookups of one host, merged: the first failure ends it (and cancels the other).
final class HostLookup {
    private var lookups: [DNSLookup] = []
    private var answers: [DNSResolver.Answer?]
    private var completion: ((Result<HostAnswer, DNSResolver.Failure>) -> Void)?
    private var unavailable: Timer?

    fileprivate init(service: DNSService, host: String, family: FulcrumConfig.DNS.Family,
                     completion: @escaping (Result<HostAnswer, DNSResolver.Failure>) -> Void) {
        self.completion = completion
        let families: [Bool] = family == .both ? [false, true] : [family == .ipv6]
        answers = Array(repeating: nil, count: families.count)
        guard let resolver = service.resolver, !service.closed else {
            let why = service.resolverProblem ?? "the resolver is closed"
            unavailable = Timer(base: service.base) { [weak self] in self?.finish(.failure(.other(why))) }
            unavailable?.schedule(after: 0)
            return
        }
        for (index, ipv6) in families.enumerated() {
            let done: DNSResolver.Completion = { [weak self] result in self?.answered(index, result) }
            lookups.append(ipv6 ? resolver.resolveIPv6(host, completion: done) : resolver.resolveIPv4(host, completion: done))
        }
    }

    func cancel() {
        completion = nil
        for lookup in lookups { lookup.cancel() }
        unavailable?.cancel()
    }

    private func answered(_ index: Int, _ result: Result<DNSResolver.Answer, DNSResolver.Failure>) {
        switch result {
        case .failure(let failure):
            finish(.failure(failure))
        case .success(let answer):
            answers[index] = answer
            let all = answers.compactMap { $0 }
            guard all.count == answers.count else { return }
            let addresses = all.flatMap { $0.addresses.compactMap { DNSRecords.address($0, port: 0) } }
            let withRecords = all.filter { !$0.addresses.isEmpty }
            let ttl = (withRecords.isEmpty ? all : withRecords).map(\.ttlSeconds).min() ?? 0
            finish(.success(HostAnswer(addresses: DNSRecords.ordered(addresses), ttlSeconds: ttl)))
        }
    }

    private func finish(_ result: Result<HostAnswer, DNSResolver.Failure>) {
        guard let completion else { return }
        cancel()
        completion(result)
    }
}

/// A host-name backend entry (`address: redis.internal:6379`): every address the name resolves to (A,
/// AAAA or both, per `dns.family`) is a backend with the entry's values. Re-resolved when the answer's TTL
/// (the least of its records', clamped to `min_ttl ... max_ttl`) ends. An answer without records is an
/// empty snapshot (the pool holds back removing everything until a second answer confirms it); NXDOMAIN,
/// a timeout or a server failure is `.failed`, retried after 1 s, doubling up to 30 s (and `max_ttl`).
final class DNSNameSource: DiscoverySource {
    let name: String
    private let service: DNSService
    private let entry: FulcrumConfig.NamedBackend
    private let settings: FulcrumConfig.DNS
    private var logger: Logger
    private let report: DiscoverySink
    private var lookup: HostLookup?
    private var timer: Timer?
    private var backoff = DNSRetryBackoff()
    private var stopped = false

    init(service: DNSService, name: FulcrumConfig.NamedBackend, settings: FulcrumConfig.DNS, logger: Logger,
         report: @escaping DiscoverySink) {
        self.name = "dns \(name.name)"
        self.service = service
        entry = name
        self.settings = settings
        self.logger = logger
        self.report = report
        timer = Timer(base: service.base) { [weak self] in self?.resolve() }
    }

    func start() { resolve() }

    func refresh() { resolve() }

    func stop() {
        stopped = true
        lookup?.cancel()
        lookup = nil
        timer?.cancel()
    }

    private func resolve() {
        guard !stopped else { return }
        timer?.cancel()
        lookup?.cancel()
        lookup = service.lookUp(entry.host, family: settings.family) { [weak self] result in self?.resolved(result) }
    }

    private func resolved(_ result: Result<HostAnswer, DNSResolver.Failure>) {
        lookup = nil
        guard !stopped else { return }
        // The timer is armed before reporting, so a report that calls refresh() or stop() has the last word.
        switch result {
        case .success(let answer):
            backoff.reset()
            let next = settings.clamp(ttlSeconds: answer.ttlSeconds)
            timer?.schedule(after: next)
            let backends = answer.addresses.map { DiscoveredBackend(entry.backend(at: $0.withPort(entry.port))) }
            report(.snapshot(backends, detail: DNSNameSource.detail(answer, next: next)))
        case .failure(let failure):
            let wait = backoff.next(cap: settings.maxTTL)
            timer?.schedule(after: wait)
            report(.failed("\(entry.host): \(DNSNameSource.text(failure, service))", retryIn: wait))
        }
    }

    /// `ttl 30s`; `ttl 0s, next in 1s` when clamped; `no address records, ttl 1s` for an empty answer.
    static func detail(_ answer: HostAnswer, next: Duration) -> String {
        let ttl = "ttl \(answer.ttlSeconds)s" + (next == .seconds(answer.ttlSeconds) ? "" : ", next in \(next.configText)")
        return answer.addresses.isEmpty ? "no address records, \(ttl)" : ttl
    }

    /// A failure as the logs and `/status` show it: a timeout names the time waited.
    static func text(_ failure: DNSResolver.Failure, _ service: DNSService) -> String {
        failure == .timeout ? "no answer within \(service.settings.timeout.configText)" : failure.description
    }
}
