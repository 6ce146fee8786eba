import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A backend in its own process (Tests/Support/backend.py), so that tests can kill -9 it, SIGSTOP it and
/// start it again on the same port.
public final class BackendProcess: @unchecked Sendable {
    public let name: String
    public private(set) var port: UInt16 = 0
    public let mode: String
    /// The loopback address it listens on (any of 127.0.0.0/8).
    public let host: String
    private var process: Process?

    public init(_ name: String, mode: String = "named", port: UInt16 = 0, host: String = "127.0.0.1",
                file: StaticString = #filePath) throws {
        self.name = name
        self.mode = mode
        self.host = host
        try start(port: port, file: file)
    }

    deinit {
        if let process, process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            waitBriefly(process)
        }
    }

    /// Starts the process (again) and waits until it listens; on its old port if it had one.
    public func start(port requested: UInt16? = nil, file: StaticString = #filePath) throws {
        let root = URL(fileURLWithPath: "\(file)").deletingLastPathComponent().deletingLastPathComponent()
            .deletingLastPathComponent()
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
        process.arguments = ["python3", root.appendingPathComponent("Tests/Support/backend.py").path, name,
                             String(requested ?? port), mode, host]
        let pipe = Pipe()
        process.standardOutput = pipe
        try process.run()
        self.process = process
        var line = Data()
        while !line.contains(10) {
            let chunk = pipe.fileHandleForReading.availableData
            if chunk.isEmpty { throw TestSocketError("backend \(name) exited before listening", errno: 0) }
            line.append(chunk)
        }
        let text = String(decoding: line, as: UTF8.self)
        guard let value = text.split(separator: " ").last.flatMap({ UInt16($0.trimmingCharacters(in: .whitespacesAndNewlines)) }) else {
            throw TestSocketError("backend \(name) said: \(text)", errno: 0)
        }
        port = value
    }

    public func signal(_ number: Int32) {
        guard let process else { return }
        kill(process.processIdentifier, number)
    }

    /// kill -9, and wait until it is gone.
    public func kill9() {
        guard let process else { return }
        kill(process.processIdentifier, SIGKILL)
        waitBriefly(process)
    }
}

/// One request on a new connection to a `BackendProcess` behind the proxy: the name of the backend that
/// answered, or nil if the connection failed.
public func askOnce(_ port: UInt16, _ i: Int) -> String? {
    guard let socket = try? TestSocket.connect(port: port, timeout: 2), (try? socket.send("req \(i)\n")) != nil,
          let line = try? socket.receiveLine() else { return nil }
    return String(line.prefix { $0 != ":" })
}

/// Steady client load through the proxy: one request after another, each on a new connection, until
/// stopped or `limit` requests are done. Records every outcome with its time.
public final class LoadClient: @unchecked Sendable {
    public struct Outcome: Sendable {
        public let at: Date
        public let backend: String?
        public let error: String?
    }

    private let port: UInt16
    private let lock = NSCondition()
    private var outcomes: [Outcome] = []
    private var stopped = false
    private let done = DispatchSemaphore(value: 0)

    public init(port: UInt16, limit: Int = 20_000, timeout: Double = 2) {
        self.port = port
        Thread.detachNewThread { [self] in
            for i in 0..<limit {
                if lock.withLock({ stopped }) { break }
                let outcome: Outcome
                do {
                    let socket = try TestSocket.connect(port: port, timeout: timeout)
                    try socket.send("req \(i)\n")
                    let line = try socket.receiveLine()
                    let name = line.split(separator: ":").first.map(String.init)
                    outcome = line.hasSuffix("req \(i)") ? Outcome(at: Date(), backend: name, error: nil)
                        : Outcome(at: Date(), backend: name, error: "wrong answer: \(line)")
                } catch {
                    outcome = Outcome(at: Date(), backend: nil, error: "\(error)")
                }
                lock.withLock {
                    outcomes.append(outcome)
                    lock.broadcast()
                }
            }
            done.signal()
        }
    }

    public var all: [Outcome] { lock.withLock { outcomes } }

    /// Waits (at most `timeout` seconds) until `count` more requests have ended, whatever their outcome.
    public func waitForOutcomes(_ count: Int, timeout: Double = 10) throws {
        let deadline = Date().addingTimeInterval(timeout)
        lock.lock()
        defer { lock.unlock() }
        let target = outcomes.count + count
        while outcomes.count < target {
            if !lock.wait(until: deadline) {
                throw TestSocketError("\(count) more requests did not end within \(timeout)s", errno: 0)
            }
        }
    }

    /// Stops after the request in progress and returns every outcome.
    public func stop() -> [Outcome] {
        lock.withLock { stopped = true }
        done.wait()
        return all
    }

    /// Waits (at most `timeout` seconds) until `backend` has answered `count` more requests.
    public func waitForAnswers(from backend: String, count: Int = 5, timeout: Double = 10) throws {
        let deadline = Date().addingTimeInterval(timeout)
        lock.lock()
        defer { lock.unlock() }
        let start = outcomes.filter { $0.backend == backend }.count
        while outcomes.filter({ $0.backend == backend }).count < start + count {
            if !lock.wait(until: deadline) {
                throw TestSocketError("\(backend) answered no \(count) requests within \(timeout)s", errno: 0)
            }
        }
    }
}

/// A long-lived client: one connection, one request after another on it, until stopped or `limit`
/// requests are done. Records the backend that answered each request, and the first error, if any.
public final class PersistentClient: @unchecked Sendable {
    private let lock = NSLock()
    private var backends: [String] = []
    private var failure: String?
    private var stopped = false
    private let done = DispatchSemaphore(value: 0)
    private let first = DispatchSemaphore(value: 0)

    /// `pause` paces the requests (seconds between an answer and the next request).
    public init(port: UInt16, limit: Int = 100_000, timeout: Double = 5, pause: Double = 0.005) throws {
        let socket = try TestSocket.connect(port: port, timeout: timeout)
        socket.setTimeout(timeout)
        Thread.detachNewThread { [self] in
            for i in 0..<limit {
                if lock.withLock({ stopped }) { break }
                do {
                    try socket.send("long \(i)\n")
                    let line = try socket.receiveLine()
                    guard line.hasSuffix("long \(i)") else { throw TestSocketError("wrong answer: \(line)", errno: 0) }
                    lock.withLock { backends.append(String(line.prefix { $0 != ":" })) }
                    if i == 0 { first.signal() }
                    if pause > 0 { Thread.sleep(forTimeInterval: pause) }
                } catch {
                    lock.withLock { failure = "request \(i): \(error)" }
                    if i == 0 { first.signal() }
                    break
                }
            }
            socket.close()
            done.signal()
        }
    }

    /// Waits for the first answer and returns the backend that gave it.
    public func firstAnswer(timeout: Double = 10) throws -> String {
        guard first.wait(timeout: .now() + timeout) == .success else {
            throw TestSocketError("no first answer within \(timeout)s", errno: 0)
        }
        first.signal()
        return try lock.withLock {
            guard let backend = backends.first else { throw TestSocketError(failure ?? "no answer", errno: 0) }
            return backend
        }
    }

    /// The backend that answered each request so far.
    public var answers: [String] { lock.withLock { backends } }

    /// Stops after the request in progress; returns the answering backends and the error, if any.
    public func stop() -> (answers: [String], error: String?) {
        lock.withLock { stopped = true }
        done.wait()
        return lock.withLock { (backends, failure) }
    }
}
