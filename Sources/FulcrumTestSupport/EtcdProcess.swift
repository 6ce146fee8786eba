import Foundation
import FulcrumCore
#if canImport(Glibc)
import Glibc
#endif

/// A real etcd (Debian's /usr/bin/etcd) of one member on free loopback ports, its data in a fresh
/// directory under /dev/shm. Ready once `GET /health` answers healthy. It can be stopped (SIGTERM),
/// paused (SIGSTOP) and started again on the same ports and data; released, it is killed and its
/// directory removed. Never the system's own etcd on 2379/2380.
public final class EtcdProcess: @unchecked Sendable {
    public let clientPort: UInt16
    public let peerPort: UInt16
    public let directory: URL
    private var process: Process?

    /// `http://127.0.0.1:PORT`, as Fulcrum's configuration and `fulcrum register --etcd` take it.
    public var url: String { "http://127.0.0.1:\(clientPort)" }

    /// `extraArguments` go to etcd as they are (e.g. `--experimental-watch-progress-notify-interval=1s`).
    public init(extraArguments: [String] = [], timeout: Double = 30) throws {
        clientPort = try freePort()
        var peer = try freePort()
        while peer == clientPort { peer = try freePort() }
        peerPort = peer
        directory = URL(fileURLWithPath: "/dev/shm").appendingPathComponent("fulcrum-etcd-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory, withIntermediateDirectories: true)
        self.extraArguments = extraArguments
        do {
            try start(timeout: timeout)
        } catch {
            kill()
            try? FileManager.default.removeItem(at: directory)
            throw error
        }
    }

    private let extraArguments: [String]

    deinit {
        kill()
        try? FileManager.default.removeItem(at: directory)
    }

    public var pid: Int32? { process.map(\.processIdentifier) }
    public var isRunning: Bool { process?.isRunning == true }

    /// Starts etcd (again: same ports, same data) and waits until it answers healthy.
    public func start(timeout: Double = 30) throws {
        guard !isRunning else { return }
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/etcd")
        let client = "http://127.0.0.1:\(clientPort)"
        let peer = "http://127.0.0.1:\(peerPort)"
        process.arguments = [
            "--name", "fulcrum-test",
            "--data-dir", directory.appendingPathComponent("data").path,
            "--listen-client-urls", client, "--advertise-client-urls", client,
            "--listen-peer-urls", peer, "--initial-advertise-peer-urls", peer,
            "--initial-cluster", "fulcrum-test=\(peer)", "--initial-cluster-state", "new",
            "--logger", "zap", "--log-outputs", "stderr",
        ] + extraArguments
        let log = directory.appendingPathComponent("etcd.log")
        if !FileManager.default.fileExists(atPath: log.path) { _ = FileManager.default.createFile(atPath: log.path, contents: nil) }
        let handle = try FileHandle(forWritingTo: log)
        handle.seekToEndOfFile()
        process.standardOutput = handle
        process.standardError = handle
        try process.run()
        self.process = process
        let deadline = Date().addingTimeInterval(timeout)
        while !healthy() {
            guard process.isRunning else { throw TestSocketError("etcd exited before it was ready; its log ends:\n\(logTail())", errno: 0) }
            guard Date() < deadline else { throw TestSocketError("etcd was not healthy within \(timeout)s; its log ends:\n\(logTail())", errno: 0) }
            usleep(20_000)
        }
    }

    /// `GET /health` answers `{"health":"true"}`.
    public func healthy() -> Bool {
        guard let answer = try? AdminClient.request(port: clientPort, "GET", "/health", timeout: 1) else { return false }
        return answer.status == 200 && answer.body.contains("\"health\":\"true\"")
    }

    /// SIGTERM, and waits until it has exited.
    public func stop() {
        guard let process, process.isRunning else { return }
        Glibc.kill(process.processIdentifier, SIGTERM)
        waitBriefly(process, seconds: 10)
        if process.isRunning { kill() }
    }

    /// SIGSTOP: etcd hangs with its sockets open (a hung server, not a dead one).
    public func pause() { process.map { _ = Glibc.kill($0.processIdentifier, SIGSTOP) } }

    /// SIGCONT after `pause`.
    public func resume() { process.map { _ = Glibc.kill($0.processIdentifier, SIGCONT) } }

    /// SIGKILL, and waits until it is gone.
    public func kill() {
        guard let process else { return }
        if process.isRunning {
            Glibc.kill(process.processIdentifier, SIGCONT)
            Glibc.kill(process.processIdentifier, SIGKILL)
            waitBriefly(process)
        }
    }

    /// The last lines etcd logged, for failure messages.
    public func logTail(_ lines: Int = 20) -> String {
        let text = (try? String(contentsOf: directory.appendingPathComponent("etcd.log"), encoding: .utf8)) ?? ""
        return text.split(separator: "\n").suffix(lines).joined(separator: "\n")
    }

    // MARK: - Keys, through the HTTP gateway

    public struct Failure: Error, CustomStringConvertible {
        public let description: String
    }

    /// POSTs a request, expects 200, returns the body.
    @discardableResult
    public func call(_ request: Etcd.Request, timeout: Double = 5) throws -> [UInt8] {
        let answer = try AdminClient.request(port: clientPort, "POST", request.path, body: request.text, timeout: timeout)
        guard answer.status == 200 else { throw Failure(description: "\(request.path) answered \(answer.status): \(answer.body)") }
        return Array(answer.body.utf8)
    }

    /// Sets `key`; returns the revision of the change.
    @discardableResult
    public func put(_ key: String, _ value: String, lease: Int64? = nil) throws -> Int64 {
        try Etcd.parseRevision(call(Etcd.put(key: key, value: Array(value.utf8), lease: lease)))
    }

    /// Deletes `key`; returns the revision after it.
    @discardableResult
    public func delete(_ key: String) throws -> Int64 {
        try Etcd.parseRevision(call(Etcd.delete(key: key)))
    }

    /// Every key under `prefix` with its value (as text) and lease (0 for none), and the revision read at.
    public func read(prefix: String) throws -> (revision: Int64, values: [String: String], leases: [String: Int64]) {
        let range = try Etcd.parseRange(call(Etcd.range(prefix: prefix)))
        var values: [String: String] = [:]
        var leases: [String: Int64] = [:]
        for kv in range.kvs {
            values[kv.keyText] = String(decoding: kv.value, as: UTF8.self)
            leases[kv.keyText] = kv.lease
        }
        return (range.revision, values, leases)
    }

    /// The value of one key, nil when it does not exist.
    public func value(_ key: String) throws -> String? {
        let range = try Etcd.parseRange(call(Etcd.get(key: key)))
        return range.kvs.first.map { String(decoding: $0.value, as: UTF8.self) }
    }

    /// The store's revision now.
    public func revision() throws -> Int64 { try Etcd.parseRevision(call(Etcd.get(key: "/"))) }

    /// Compacts the history up to `revision` (watches from before it then fail as compacted).
    public func compact(_ revision: Int64) throws {
        let body = JSON.object(["revision": .string(String(revision)), "physical": .bool(true)])
        try call(Etcd.Request(path: "/v3/kv/compaction", body: Array(body.text.utf8)))
    }

    /// The seconds a lease has left, or nil if it does not exist (any more).
    public func leaseTTL(_ id: Int64) throws -> Int64? {
        let body = JSON.object(["ID": .string(String(id))])
        let answer = try JSON.parse(call(Etcd.Request(path: "/v3/lease/timetolive", body: Array(body.text.utf8))))
        guard case .string(let text)? = answer["TTL"], let ttl = Int64(text), ttl > 0 else { return nil }
        return ttl
    }

    /// Waits (at most `timeout` seconds, polling every 20 ms) until `condition` holds for the keys under
    /// `prefix`; returns them. Throws with the last values seen.
    @discardableResult
    public func waitFor(prefix: String, timeout: Double = 10, _ what: String,
                        _ condition: ([String: String]) -> Bool) throws -> [String: String] {
        let deadline = Date().addingTimeInterval(timeout)
        var last: [String: String] = [:]
        while true {
            if let values = try? read(prefix: prefix).values {
                last = values
                if condition(values) { return values }
            }
            guard Date() < deadline else {
                throw Failure(description: "etcd: not \(what) within \(timeout)s; keys under \(prefix): \(last)")
            }
            usleep(20_000)
        }
    }
}

/// A port that was free on 127.0.0.1 a moment ago.
public func freePort() throws -> UInt16 {
    let (fd, port) = try boundSocket(listen: nil)
    close(fd)
    return port
}
