import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A running `fulcrum register` sidecar (the built executable), its log collected line by line. Killed when
/// released.
public final class RegisterProcess: @unchecked Sendable {
    private let process = Process()
    private let collector = LogCollector()

    public init(_ arguments: [String]) throws {
        process.executableURL = fulcrumExecutable()
        process.arguments = ["register"] + arguments
        try collector.run(process)
    }

    deinit { kill9() }

    public var pid: Int32 { process.processIdentifier }

    public var log: String { collector.lock.withLock { collector.lines.joined(separator: "\n") } }

    public func signal(_ number: Int32) { kill(process.processIdentifier, number) }

    /// SIGKILL: the sidecar dies without a word to etcd.
    public func kill9() {
        guard process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        waitBriefly(process)
    }

    /// Waits until a log line contains `text` (`count` such lines); throws after `timeout` seconds or once
    /// the process has ended.
    @discardableResult
    public func waitForLog(_ text: String, count: Int = 1, timeout: Double = 10) throws -> String {
        let deadline = Date().addingTimeInterval(timeout)
        let lock = collector.lock
        lock.lock()
        defer { lock.unlock() }
        while true {
            let matches = collector.lines.filter { $0.contains(text) }
            if matches.count >= count { return matches[count - 1] }
            if collector.closed || !lock.wait(until: deadline) {
                throw TestSocketError("no line with '\(text)' within \(timeout)s; log:\n\(collector.lines.joined(separator: "\n"))", errno: 0)
            }
        }
    }

    /// Waits for the exit and returns its status; kills it past `timeout`.
    public func waitForExit(timeout: Double = 10) throws -> Int32 {
        let deadline = Date().addingTimeInterval(timeout)
        let lock = collector.lock
        lock.lock()
        while !collector.closed && lock.wait(until: deadline) {}
        let ended = collector.closed
        lock.unlock()
        guard ended else {
            kill9()
            throw TestSocketError("fulcrum register still running after \(timeout)s; log:\n\(log)", errno: 0)
        }
        process.waitUntilExit()
        return process.terminationStatus
    }
}
