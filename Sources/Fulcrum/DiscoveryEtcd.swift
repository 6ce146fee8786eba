import EventLoop
import FulcrumCore
import Logging

/// Follows the keys under an etcd prefix, each one backend (`Etcd.backend(key:value:)`), through etcd's
/// v3 HTTP/JSON gateway on the engine's main loop.
///
///     start / refresh ──▶ READ the prefix ──ok──▶ snapshot ──▶ WATCH from its revision + 1
///                            │  ▲                               │ events ──▶ put / delete (in order)
///                     failed │  │ compacted ◀────────────────── │
///                            ▼  │                               │ dropped, canceled, silent and
///                         WAITING (backoff 0.5s doubling to 10s,│ no answer to a liveness check
///                         next endpoint) ◀──────────────────────┘
///                            │ after a dropped watch: WATCH again from the last revision seen + 1
///
/// The read and the liveness checks share one connection; the watch has its own. Every change is reported
/// exactly once: a resumed watch starts after the last revision reported (an event, or a progress
/// notification), so nothing is missed and nothing repeats; only a compacted revision makes it read the
/// whole prefix again. While etcd cannot be reached the pool keeps its backends and the source reports
/// `.failed` at each attempt; once a resumed watch is running again it reports the set it last reported as
/// a snapshot (no read from etcd: the pool sees no change, but learns that the source is current again).
final class EtcdSource: DiscoverySource {
    /// How long things may take; tests shorten them.
    struct Timing {
        /// A read, a liveness check, or a watch's answer headers.
        var requestTimeout: Duration = .seconds(2)
        /// A watch that sends nothing for this long is checked with a read of one key; etcd sends nothing
        /// on a quiet prefix (progress notifications come every 10 minutes by default).
        var silence: Duration = .seconds(10)
        var firstRetry: Duration = .milliseconds(500)
        var maxRetry: Duration = .seconds(10)
    }

    private enum Next { case read, watch }

    let name: String
    private let base: EventBase
    private let settings: FulcrumConfig.Discovery.Etcd
    private var logger: Logger
    private let report: DiscoverySink
    private let timing: Timing

    private var running = false
    private var stopped = false
    /// Changes with every new step (read, watch, wait, stop): callbacks of an older step are ignored.
    private var epoch = 0
    private var endpoint = 0
    private var client: HTTPClient?
    private var watchClient: HTTPClient?
    private var call: HTTPCall?
    private var watchCall: HTTPCall?
    private var stream = Etcd.WatchStream()
    /// Every change up to this revision has been reported.
    private(set) var revision: Int64 = 0
    /// The set as reported so far, by key (an invalid value keeps the key's last good one).
    private var known: [String: FulcrumConfig.Backend] = [:]
    /// Attempts that failed since the last success.
    private(set) var failures = 0
    /// The failure reported, until a success.
    private var staleReason: String?
    /// What the retry timer does when it fires.
    private var pendingRetry = Next.read
    private var retryTimer: Timer?
    private var silenceTimer: Timer?

    convenience init(base: EventBase, settings: FulcrumConfig.Discovery.Etcd, logger: Logger,
                     report: @escaping DiscoverySink) {
        self.init(base: base, settings: settings, logger: logger, timing: Timing(), report: report)
    }

    init(base: EventBase, settings: FulcrumConfig.Discovery.Etcd, logger: Logger, timing: Timing,
         report: @escaping DiscoverySink) {
        self.base = base
        self.settings = settings
        self.timing = timing
        self.report = report
        name = FulcrumConfig.Discovery.Source.etcd(settings).name
        var logger = logger
        logger[metadataKey: "source"] = "\(name)"
        self.logger = logger
        retryTimer = Timer(base: base) { [weak self] in self?.retry() }
        silenceTimer = Timer(base: base) { [weak self] in self?.checkSilentWatch() }
    }

    deinit { stop() }

    func start() {
        guard !running, !stopped else { return }
        running = true
        read()
    }

    func refresh() {
        guard running, !stopped else { return }
        read()
    }

    func stop() {
        guard !stopped else { return }
        stopped = true
        epoch += 1
        retryTimer?.cancel()
        silenceTimer?.cancel()
        closeWatch()
        call?.cancel()
        client?.close()
        client = nil
    }

    // MARK: - Endpoints

    private var url: String { "http://\(settings.endpoints[endpoint])" }

    private func requestClient() -> HTTPClient {
        if let client { return client }
        let client = HTTPClient(base: base, address: settings.endpoints[endpoint])
        self.client = client
        return client
    }

    // MARK: - Reading the prefix

    private func read() {
        epoch += 1
        let epoch = self.epoch
        retryTimer?.cancel()
        silenceTimer?.cancel()
        closeWatch()
        call?.cancel()
        let request = Etcd.range(prefix: settings.prefix)
        call = requestClient().request(method: .post, path: request.path, body: request.body, timeout: timing.requestTimeout) {
            [weak self] result in
            guard let self, self.epoch == epoch else { return }
            self.call = nil
            self.readDone(result, epoch)
        }
    }

    private func readDone(_ result: Result<HTTPClientResponse, HTTPClientError>, _ epoch: Int) {
        let range: Etcd.RangeResult
        do {
            range = try Etcd.parseRange(try answer(result))
        } catch {
            return failed("cannot read the prefix from etcd at \(url): \(error)", next: .read)
        }
        var entries: [DiscoveredBackend] = []
        var invalid: [(String, String)] = []
        var fresh: [String: FulcrumConfig.Backend] = [:]
        for kv in range.kvs {
            switch record(kv) {
            case .success(let (key, backend)):
                fresh[key] = backend
                entries.append(DiscoveredBackend(key: key, backend: backend))
            case .failure(let error):
                invalid.append((error.key, error.description))
                // The key's last good value stays.
                if let last = known[error.key] {
                    fresh[error.key] = last
                    entries.append(DiscoveredBackend(key: error.key, backend: last))
                }
            }
        }
        known = fresh
        revision = range.revision
        let attempts = failures
        succeeded()
        let verb = attempts > 0 ? "read after \(attempts) failed attempt\(attempts == 1 ? "" : "s")" : "read"
        let invalidText = invalid.isEmpty ? "" : ", \(invalid.count) invalid"
        logger.info("\(verb): \(range.kvs.count) key\(range.kvs.count == 1 ? "" : "s") at revision \(range.revision) from \(url)\(invalidText); watching from revision \(range.revision + 1)")
        guard emit(.snapshot(entries, detail: "revision \(range.revision)"), epoch) else { return }
        for (key, message) in invalid {
            guard emit(.invalid(key: key, message: message), epoch) else { return }
        }
        watch()
    }

    /// A key and its backend, or why its value is not one.
    private func record(_ kv: Etcd.KeyValue) -> Result<(String, FulcrumConfig.Backend), Etcd.RecordError> {
        guard let key = String(validating: kv.key, as: UTF8.self) else {
            return .failure(Etcd.RecordError(key: kv.keyText, problem: "the key is not UTF-8",
                                             fix: "name backends' keys in UTF-8, e.g. \(settings.prefix)10.0.0.5:6379"))
        }
        return Etcd.backend(key: key, value: kv.value).map { (key, $0) }
    }

    /// The body of a 200 answer; anything else is thrown as a message.
    private func answer(_ result: Result<HTTPClientResponse, HTTPClientError>) throws -> [UInt8] {
        switch result {
        case .failure(let error):
            throw Etcd.ProtocolError(error.description)
        case .success(let response) where response.status == 200:
            return response.body
        case .success(let response):
            throw Etcd.ProtocolError("HTTP status \(response.status)" + (Etcd.errorMessage(response.body).map { ": \($0)" } ?? ""))
        }
    }

    // MARK: - Watching

    private func watch() {
        epoch += 1
        let epoch = self.epoch
        closeWatch()
        stream = Etcd.WatchStream()
        let client = HTTPClient(base: base, address: settings.endpoints[endpoint])
        watchClient = client
        let request = Etcd.watch(prefix: settings.prefix, startRevision: revision + 1)
        watchCall = client.stream(method: .post, path: request.path, body: request.body, timeout: timing.requestTimeout,
                                  onChunk: { [weak self] bytes in
                                      guard let self, self.epoch == epoch else { return }
                                      self.watchBytes(bytes, epoch)
                                  }, completion: { [weak self] result in
                                      guard let self, self.epoch == epoch else { return }
                                      self.watchCall = nil
                                      switch result {
                                      case .success: self.watchFailed("etcd ended the watch", epoch)
                                      case .failure(let error): self.watchFailed("\(error)", epoch)
                                      }
                                  })
        silenceTimer?.schedule(after: timing.silence)
    }

    private func closeWatch() {
        silenceTimer?.cancel()
        watchCall?.cancel()
        watchCall = nil
        watchClient?.close()
        watchClient = nil
    }

    private func watchBytes(_ bytes: [UInt8], _ epoch: Int) {
        silenceTimer?.schedule(after: timing.silence)
        let messages: [[UInt8]]
        do {
            messages = try stream.feed(bytes)
        } catch {
            return watchFailed("unreadable watch stream: \(error)", epoch)
        }
        for bytes in messages {
            let message: Etcd.WatchMessage
            do {
                message = try Etcd.parseWatchMessage(bytes)
            } catch {
                return watchFailed("unreadable watch message: \(error)", epoch)
            }
            guard handle(message, epoch), self.epoch == epoch else { return }
        }
    }

    /// Applies one watch message; false once the watch is over (or the source was stopped).
    private func handle(_ message: Etcd.WatchMessage, _ epoch: Int) -> Bool {
        switch message {
        case .created:
            guard staleReason != nil else {
                failures = 0
                return true
            }
            let attempts = failures
            succeeded()
            logger.notice("watch resumed from revision \(revision + 1) on \(url) after \(attempts) failed attempt\(attempts == 1 ? "" : "s")")
            let entries = known.sorted { $0.key < $1.key }.map { DiscoveredBackend(key: $0.key, backend: $0.value) }
            return emit(.snapshot(entries, detail: "revision \(revision), watch resumed"), epoch)
        case .events(let events, _):
            // Never twice: a change at or below the revision reported is one the pool has. One revision can
            // hold several events (a delete of a range, a transaction, a lease with several keys): every
            // one of them is above the revision before this message.
            let floor = revision
            for event in events {
                let kv = event.keyValue
                guard kv.modRevision > floor else { continue }
                revision = max(revision, kv.modRevision)
                let detail = "revision \(kv.modRevision)"
                let report: DiscoveryReport
                switch event {
                case .put:
                    switch record(kv) {
                    case .success(let (key, backend)):
                        known[key] = backend
                        report = .put(DiscoveredBackend(key: key, backend: backend), detail: detail)
                    case .failure(let error):
                        report = .invalid(key: error.key, message: error.description)
                    }
                case .delete:
                    known[kv.keyText] = nil
                    report = .delete(key: kv.keyText, detail: detail)
                }
                guard emit(report, epoch) else { return false }
            }
            return true
        case .progress(let at):
            revision = max(revision, at)
            return true
        case .compacted(let compactRevision):
            logger.notice("revision \(revision + 1) was compacted (etcd keeps revisions from \(compactRevision) on); reading the prefix again")
            read()
            return false
        case .canceled(let reason):
            watchFailed(reason, epoch)
            return false
        case .error(let error):
            watchFailed("etcd reported an error on the watch: \(error)", epoch)
            return false
        }
    }

    /// The watch sent nothing for a while: a quiet prefix, or an etcd that hangs. A read of one key tells.
    private func checkSilentWatch() {
        guard running, !stopped, watchCall != nil else { return }
        let epoch = self.epoch
        let request = Etcd.get(key: settings.prefix)
        call?.cancel()
        call = requestClient().request(method: .post, path: request.path, body: request.body, timeout: timing.requestTimeout) {
            [weak self] result in
            guard let self, self.epoch == epoch else { return }
            self.call = nil
            do {
                _ = try Etcd.parseRevision(try self.answer(result))
                self.silenceTimer?.schedule(after: self.timing.silence)
            } catch {
                self.watchFailed("no bytes for \(self.timing.silence.configText), and etcd did not answer a liveness check: \(error)", epoch)
            }
        }
    }

    private func watchFailed(_ message: String, _ epoch: Int) {
        guard self.epoch == epoch else { return }
        failed("the watch on \(url) ended: \(message)", next: .watch)
    }

    // MARK: - Failures and retries

    private func failed(_ message: String, next: Next) {
        epoch += 1
        closeWatch()
        call?.cancel()
        call = nil
        client?.close()
        client = nil
        let delay = backoff(failures)
        failures += 1
        let previous = url
        endpoint = (endpoint + 1) % settings.endpoints.count
        let resume = next == .watch ? "resuming the watch from revision \(revision + 1)" : "reading again"
        let text = "\(message); \(resume) in \(delay.configText)" + (url == previous ? "" : " on \(url)")
        if staleReason == nil {
            logger.warning("etcd unreachable, keeping the last known backends: \(text)")
        } else {
            logger.debug("etcd still unreachable: \(text)")
        }
        staleReason = staleReason ?? message
        pendingRetry = next
        guard emit(.failed(text, retryIn: delay), epoch) else { return }
        retryTimer?.schedule(after: delay)
    }

    private func retry() {
        guard running, !stopped else { return }
        switch pendingRetry {
        case .read: read()
        case .watch: watch()
        }
    }

    private func succeeded() {
        failures = 0
        staleReason = nil
    }

    /// 0.5s, 1s, 2s, ... up to 10s.
    private func backoff(_ failures: Int) -> Duration {
        var delay = timing.firstRetry
        for _ in 0..<min(failures, 30) where delay < timing.maxRetry { delay *= 2 }
        return min(delay, timing.maxRetry)
    }

    /// Reports, unless stopped meanwhile; false once the step that reports is over.
    private func emit(_ report: DiscoveryReport, _ epoch: Int) -> Bool {
        guard !stopped, self.epoch == epoch else { return false }
        self.report(report)
        return !stopped && self.epoch == epoch
    }
}

extension HTTPClient {
    /// A client of etcd (or any HTTP server) at an IP address.
    convenience init(base: EventBase, address: SocketAddress) {
        switch address {
        case .ipv4(let a, let port):
            self.init(base: base, host: "\(a.0).\(a.1).\(a.2).\(a.3)", port: port)
        case .ipv6:
            self.init(base: base, host: String(address.description.dropFirst().prefix { $0 != "]" }), port: address.port)
        }
    }
}
