import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// A helper program (e.g. a browser-driving script) with its standard input and output piped: the test
/// reads its lines as they come and writes to it. Killed when released.
public final class ScriptProcess: @unchecked Sendable {
    private let process = Process()
    private let input = Pipe()
    private let collector = LogCollector()

    public init(_ executable: String, _ arguments: [String]) throws {
        process.executableURL = URL(fileURLWithPath: executable)
        process.arguments = arguments
        process.standardInput = input
        try collector.run(process)
    }

    deinit {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            waitBriefly(process)
        }
    }

    /// Every line it printed so far.
    public var output: String { collector.lock.withLock { collector.lines.joined(separator: "\n") } }

    public func write(_ text: String) { input.fileHandleForWriting.write(Data(text.utf8)) }

    /// Waits until a line contains `text`; throws after `timeout` seconds or once its output ends.
    public func waitForLine(_ text: String, timeout: Double) throws {
        let deadline = Date().addingTimeInterval(timeout)
        let lock = collector.lock
        lock.lock()
        defer { lock.unlock() }
        while !collector.lines.contains(where: { $0.contains(text) }) {
            if collector.closed || !lock.wait(until: deadline) {
                throw TestSocketError("no line with '\(text)' within \(timeout)s; output:\n\(collector.lines.joined(separator: "\n"))", errno: 0)
            }
        }
    }

    /// Waits for the exit (and the end of its output) and returns its status; kills it past `timeout`.
    public func waitForExit(timeout: Double) throws -> Int32 {
        let deadline = Date().addingTimeInterval(timeout)
        let lock = collector.lock
        lock.lock()
        while !collector.closed && lock.wait(until: deadline) {}
        let ended = collector.closed
        lock.unlock()
        guard ended else {
            kill(process.processIdentifier, SIGKILL)
            throw TestSocketError("still running after \(timeout)s; output:\n\(output)", errno: 0)
        }
        process.waitUntilExit()
        return process.terminationStatus
    }
}

extension LogCollector {
    /// Starts `process` with its standard output and error read, line by line, into this collector.
    func run(_ process: Process) throws {
        let output = Pipe()
        (process.standardOutput, process.standardError) = (output, output)
        try process.run()
        Thread.detachNewThread { [self] in read(output.fileHandleForReading) }
    }
}
