import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// The built `fulcrum` executable.
public func fulcrumExecutable(file: StaticString = #filePath) -> URL {
    if let path = ProcessInfo.processInfo.environment["FULCRUM_BIN"] { return URL(fileURLWithPath: path) }
    // Sources/FulcrumTestSupport/FulcrumProcess.swift -> package root.
    let root = URL(fileURLWithPath: "\(file)").deletingLastPathComponent().deletingLastPathComponent().deletingLastPathComponent()
    return root.appendingPathComponent(".build/debug/fulcrum")
}

/// Runs a `fulcrum` command to completion and returns its exit status and combined output.
public func runFulcrum(_ arguments: [String]) throws -> (status: Int32, output: String) {
    try runProgram(fulcrumExecutable(), arguments)
}

/// Runs a program to completion and returns its exit status and combined output.
public func runProgram(_ executable: URL, _ arguments: [String]) throws -> (status: Int32, output: String) {
    let process = Process()
    process.executableURL = executable
    process.arguments = arguments
    let pipe = Pipe()
    process.standardOutput = pipe
    process.standardError = pipe
    try process.run()
    let data = pipe.fileHandleForReading.readDataToEndOfFile()
    process.waitUntilExit()
    return (process.terminationStatus, String(decoding: data, as: UTF8.self))
}

/// Waits for a killed process to be seen gone, at most `seconds`: a test must never hang on a child whose
/// end Foundation has not noticed yet.
public func waitBriefly(_ process: Process, seconds: Double = 5) {
    let deadline = Date().addingTimeInterval(seconds)
    while process.isRunning && Date() < deadline { usleep(10_000) }
}

/// A temporary directory removed when the value is released.
public final class TemporaryDirectory: @unchecked Sendable {
    public let url: URL

    public init() throws {
        url = FileManager.default.temporaryDirectory.appendingPathComponent("fulcrum-test-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: url, withIntermediateDirectories: true)
    }

    deinit { try? FileManager.default.removeItem(at: url) }

    public func write(_ name: String, _ text: String) throws -> String {
        let file = url.appendingPathComponent(name)
        try text.write(to: file, atomically: true, encoding: .utf8)
        return file.path
    }
}

/// The log of a running process, collected line by line by a reader thread. Separate from
/// `FulcrumProcess` so that the reader thread does not keep the process object (and the process) alive.
final class LogCollector: @unchecked Sendable {
    let lock = NSCondition()
    var lines: [String] = []
    var closed = false

    func read(_ handle: FileHandle) {
        var pending = Data()
        while true {
            let data = handle.availableData
            if data.isEmpty { break }
            pending.append(data)
            while let newline = pending.firstIndex(of: 10) {
                let line = String(decoding: pending[pending.startIndex..<newline], as: UTF8.self)
                pending.removeSubrange(pending.startIndex...newline)
                lock.withLock {
                    lines.append(line)
                    lock.broadcast()
                }
            }
        }
        lock.withLock {
            closed = true
            lock.broadcast()
        }
    }
}

/// A running `fulcrum run` process: started on a config, ready once it has logged every listener's
/// bound address and "fulcrum ready", with its log collected for assertions. Killed when released.
public final class FulcrumProcess: @unchecked Sendable {
    public let process = Process()
    private let directory: TemporaryDirectory
    private let collector = LogCollector()
    /// The admin API's port, when the configuration turns it on.
    public private(set) var adminPort: UInt16?
    /// The port each listener bound, by listener name.
    public private(set) var ports: [String: UInt16] = [:]
    /// The configuration file the process was started with (`--config`), which SIGHUP makes it re-read.
    public let configPath: String

    /// Starts `fulcrum run` on `yaml` and waits (at most `timeout` seconds) until it has logged
    /// `readyLine` (nil: does not wait). `launcher` runs before it (e.g. `["prlimit", "--nofile=48:48"]`,
    /// which executes fulcrum in its own process); `environment` is added to the test's own; `arguments`
    /// follow `run --config FILE` (e.g. `["--upgrade-from", path]`).
    public init(config yaml: String, timeout: Double = 20, launcher: [String] = [],
                environment: [String: String] = [:], arguments: [String] = [],
                readyLine: String? = "fulcrum ready") throws {
        directory = try TemporaryDirectory()
        let path = try directory.write("fulcrum.yaml", yaml)
        configPath = path
        let command = [fulcrumExecutable().path, "run", "--config", path] + arguments
        if launcher.isEmpty {
            process.executableURL = fulcrumExecutable()
            process.arguments = Array(command.dropFirst())
        } else {
            process.executableURL = URL(fileURLWithPath: "/usr/bin/env")
            process.arguments = launcher + command
        }
        if !environment.isEmpty {
            process.environment = ProcessInfo.processInfo.environment.merging(environment) { $1 }
        }
        let pipe = Pipe()
        process.standardError = pipe
        process.standardOutput = pipe
        try process.run()
        let handle = pipe.fileHandleForReading
        let collector = self.collector
        Thread.detachNewThread { collector.read(handle) }
        do {
            if let readyLine { try waitForLog(containing: readyLine, timeout: timeout) }
        } catch {
            stop()
            throw error
        }
        for line in log where line.contains("admin API on http://") {
            let address = line.components(separatedBy: "admin API on http://").last ?? ""
            adminPort = address.split(separator: "/").first.flatMap { $0.split(separator: ":").last }.flatMap { UInt16($0) }
        }
        for line in log where line.contains("listening on ") {
            guard let listener = field("listener", in: line),
                  let address = line.components(separatedBy: "listening on ").last,
                  let port = address.split(separator: ":").last.flatMap({ UInt16($0) }) else { continue }
            ports[listener] = port
        }
    }

    deinit { stop() }

    private func stop() {
        if process.isRunning {
            kill(process.processIdentifier, SIGKILL)
            waitBriefly(process)
        }
    }

    public func port(_ listener: String) -> UInt16 { ports[listener] ?? 0 }

    public var log: [String] { collector.lock.withLock { collector.lines } }

    public func logCount(containing text: String) -> Int { log.filter { $0.contains(text) }.count }

    /// Waits until a log line contains `text`; throws after `timeout` seconds or if the process exits first.
    @discardableResult
    public func waitForLog(containing text: String, count: Int = 1, timeout: Double = 10) throws -> String {
        let deadline = Date().addingTimeInterval(timeout)
        let lock = collector.lock
        lock.lock()
        defer { lock.unlock() }
        while true {
            let matches = collector.lines.filter { $0.contains(text) }
            if matches.count >= count { return matches[count - 1] }
            if collector.closed {
                throw TestSocketError("fulcrum exited before logging '\(text)'; log:\n\(collector.lines.joined(separator: "\n"))", errno: 0)
            }
            if !lock.wait(until: deadline) {
                throw TestSocketError("no log line with '\(text)' within \(timeout)s; log:\n\(collector.lines.joined(separator: "\n"))", errno: 0)
            }
        }
    }

    public func signal(_ number: Int32) { kill(process.processIdentifier, number) }

    /// Replaces the configuration file (atomically: a rename) without telling the process.
    public func writeConfig(_ yaml: String) throws { _ = try directory.write("fulcrum.yaml", yaml) }

    /// Replaces the configuration file, sends SIGHUP, and waits until every worker has applied the reload
    /// (the log says `reload applied by every worker`); throws if the reload failed instead.
    public func reload(_ yaml: String, timeout: Double = 10) throws {
        let applied = logCount(containing: "reload applied by every worker")
        let failed = logCount(containing: "reload failed")
        try writeConfig(yaml)
        signal(SIGHUP)
        let deadline = Date().addingTimeInterval(timeout)
        let lock = collector.lock
        lock.lock()
        defer { lock.unlock() }
        while true {
            let lines = collector.lines
            if lines.filter({ $0.contains("reload applied by every worker") }).count > applied { return }
            if lines.filter({ $0.contains("reload failed") }).count > failed {
                throw TestSocketError("the reload failed; log:\n\(lines.suffix(20).joined(separator: "\n"))", errno: 0)
            }
            if collector.closed || !lock.wait(until: deadline) {
                throw TestSocketError("no reload applied within \(timeout)s; log:\n\(lines.suffix(20).joined(separator: "\n"))", errno: 0)
            }
        }
    }

    /// Bytes logged so far, newlines included.
    public var logBytes: Int { log.reduce(0) { $0 + $1.utf8.count + 1 } }

    /// CPU time the process has used so far, user and system, in seconds (from /proc/PID/stat).
    public func cpuSeconds() throws -> Double { ProcessStats.cpuSeconds(process.processIdentifier) }

    /// The process's open descriptors, by number.
    public func openDescriptors() throws -> [Int32] {
        ProcessStats.openDescriptors(process.processIdentifier).map { Int32($0) }
    }

    /// Waits for the process to exit and returns its status; throws (after killing it) past `timeout`.
    public func waitForExit(timeout: Double = 10) throws -> Int32 {
        let exited = DispatchSemaphore(value: 0)
        let process = self.process
        Thread.detachNewThread {
            process.waitUntilExit()
            exited.signal()
        }
        if exited.wait(timeout: .now() + timeout) == .timedOut {
            kill(process.processIdentifier, SIGKILL)
            throw TestSocketError("fulcrum did not exit within \(timeout)s", errno: 0)
        }
        // The log reader has everything once the pipe is drained.
        let lock = collector.lock
        lock.lock()
        while !collector.closed && lock.wait(until: Date().addingTimeInterval(1)) {}
        lock.unlock()
        return process.terminationStatus
    }

    private func field(_ key: String, in line: String) -> String? {
        guard let range = line.range(of: "\(key)=") else { return nil }
        return String(line[range.upperBound...].prefix { $0 != " " })
    }
}
