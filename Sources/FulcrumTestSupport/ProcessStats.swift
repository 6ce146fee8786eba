import Foundation
#if canImport(Glibc)
import Glibc
#endif

/// What the kernel says about a running process, for tests that bound its CPU, memory and descriptors.
public enum ProcessStats {
    /// User plus system CPU time, in seconds (from /proc/PID/stat).
    public static func cpuSeconds(_ pid: Int32) -> Double {
        guard let stat = try? String(contentsOfFile: "/proc/\(pid)/stat", encoding: .utf8),
              let end = stat.lastIndex(of: ")") else { return 0 }
        // Fields after the command name: state is field 3; utime and stime are fields 14 and 15.
        let fields = stat[stat.index(after: end)...].split(separator: " ")
        guard fields.count > 12, let user = Double(fields[11]), let system = Double(fields[12]) else { return 0 }
        return (user + system) / Double(sysconf(Int32(_SC_CLK_TCK)))
    }

    /// Resident memory in bytes (VmRSS from /proc/PID/status).
    public static func residentBytes(_ pid: Int32) -> Int {
        guard let status = try? String(contentsOfFile: "/proc/\(pid)/status", encoding: .utf8),
              let line = status.split(separator: "\n").first(where: { $0.hasPrefix("VmRSS:") }),
              let kib = Int(line.split(separator: " ").dropFirst().first ?? "") else { return 0 }
        return kib * 1024
    }

    /// The descriptor numbers the process has open.
    public static func openDescriptors(_ pid: Int32) -> [Int] {
        ((try? FileManager.default.contentsOfDirectory(atPath: "/proc/\(pid)/fd")) ?? []).compactMap { Int($0) }
    }

    /// Waits (at most `timeout` seconds) until the process's descriptors stop changing: connections just
    /// closed are gone and every worker has opened what it keeps open.
    public static func waitForSteadyDescriptors(_ pid: Int32, timeout: Double = 5) {
        let deadline = Date().addingTimeInterval(timeout)
        var last = Set(openDescriptors(pid))
        while Date() < deadline {
            usleep(50_000)
            let now = Set(openDescriptors(pid))
            if now == last { return }
            last = now
        }
    }

    /// The open-file limit that leaves the process exactly `free` more descriptors: a limit bounds the
    /// descriptor numbers, and new descriptors take the lowest free number.
    public static func fileLimit(leaving free: Int, _ pid: Int32) -> Int {
        let used = Set(openDescriptors(pid))
        var limit = 0
        var left = free
        while left > 0 || used.contains(limit) {
            if !used.contains(limit) { left -= 1 }
            limit += 1
        }
        return limit
    }

    /// Sets a running process's soft open-file limit with prlimit(1).
    public static func setFileLimit(_ pid: Int32, _ limit: Int) throws {
        let process = Process()
        process.executableURL = URL(fileURLWithPath: "/usr/bin/prlimit")
        process.arguments = ["--pid", "\(pid)", "--nofile=\(limit):"]
        try process.run()
        process.waitUntilExit()
        guard process.terminationStatus == 0 else {
            throw TestSocketError("prlimit --pid \(pid) --nofile=\(limit) failed", errno: 0)
        }
    }

    /// Raises this process's own soft open-file limit to its hard limit; returns the new soft limit.
    @discardableResult
    public static func raiseOwnFileLimit() -> Int {
        var limit = rlimit()
        getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
        limit.rlim_cur = limit.rlim_max
        setrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
        getrlimit(__rlimit_resource_t(RLIMIT_NOFILE.rawValue), &limit)
        return Int(clamping: limit.rlim_cur)
    }
}

/// A backend that completes connections (the kernel accepts them into its queue) but never reads a byte:
/// whatever is sent to it piles up in socket buffers.
public final class SilentBackend: @unchecked Sendable {
    public let port: UInt16
    private let fd: Int32

    public init() throws { (fd, port) = try boundSocket(listen: 128) }
    deinit { close(fd) }
}

/// Starts a non-blocking connect to 127.0.0.1:`port` and returns the socket without waiting.
public func startConnect(port: UInt16) -> Int32 {
    let fd = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
    guard fd >= 0 else { return -1 }
    var addr = loopback(port: port)
    _ = withUnsafePointer(to: &addr) {
        $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
    }
    return fd
}
