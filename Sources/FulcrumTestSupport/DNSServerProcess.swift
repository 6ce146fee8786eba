import Foundation
import FulcrumCore
#if canImport(Glibc)
import Glibc
#endif

/// A real DNS server for tests: Debian's dnsmasq (package dnsmasq-base, which installs no system service)
/// on a free loopback UDP port, answering for one domain from a hosts file only (`--local`: any other
/// name of the domain is NXDOMAIN; names outside it are REFUSED, as no upstream server is configured).
/// Every answer has the TTL given (`--local-ttl`). A records change while it runs (`setHosts`: dnsmasq
/// re-reads its hosts directory by itself, through inotify); SRV records change with a restart on the
/// same port. Stopped by PID, and at the latest when released.
public final class DNSServerProcess: @unchecked Sendable {
    public struct SRVRecord: Sendable {
        public var name: String
        public var target: String
        public var port: UInt16
        public var priority: UInt16
        public var weight: UInt16

        public init(_ name: String, target: String, port: UInt16, priority: UInt16 = 0, weight: UInt16 = 0) {
            self.name = name
            self.target = target
            self.port = port
            self.priority = priority
            self.weight = weight
        }
    }

    public static let executable = "/usr/sbin/dnsmasq"
    public let domain: String
    public let ttl: Int
    public private(set) var port: UInt16 = 0
    private let directory: URL
    private var process: Process?
    private var srv: [SRVRecord]

    /// Starts dnsmasq with these A/AAAA records (`(address, name)`) and SRV records, and waits until it
    /// answers a query.
    public init(domain: String = "fulcrum.test", hosts: [(address: String, name: String)] = [], srv: [SRVRecord] = [],
                ttl: Int = 1) throws {
        self.domain = domain
        self.ttl = ttl
        self.srv = srv
        directory = FileManager.default.temporaryDirectory.appendingPathComponent("fulcrum-dns-\(UUID().uuidString)")
        try FileManager.default.createDirectory(at: directory.appendingPathComponent("hosts"), withIntermediateDirectories: true)
        try writeHosts(hosts)
        try start(samePort: false)
    }

    deinit {
        stop()
        try? FileManager.default.removeItem(at: directory)
    }

    /// `127.0.0.1:PORT`, as `dns.servers` takes it.
    public var address: String { "127.0.0.1:\(port)" }
    public var socketAddress: SocketAddress { .ipv4((127, 0, 0, 1), port: port) }
    public var isRunning: Bool { process?.isRunning ?? false }

    /// dnsmasq's log so far.
    public var log: String { (try? String(contentsOf: logFile, encoding: .utf8)) ?? "" }

    /// Replaces the hosts file (a write and a rename, as dnsmasq expects) and waits until dnsmasq says it
    /// has read it again.
    public func setHosts(_ hosts: [(address: String, name: String)], timeout: Double = 10) throws {
        let before = readCount()
        try writeHosts(hosts)
        let deadline = Date().addingTimeInterval(timeout)
        while readCount() <= before {
            guard Date() < deadline else { throw TestSocketError("dnsmasq did not re-read its hosts file within \(timeout)s; log:\n\(log)", errno: 0) }
            usleep(20_000)
        }
    }

    /// Stops the server and starts it again on the same port with other SRV records.
    public func restart(srv: [SRVRecord]) throws {
        stop()
        self.srv = srv
        try start(samePort: true)
    }

    /// Starts it again after `stop()`, on the same port, with the records it had.
    public func start() throws { try start(samePort: true) }

    /// Kills it (SIGKILL: it has nothing to save, and a test runner may start children with SIGTERM
    /// blocked, which dnsmasq keeps) and waits until it is gone.
    public func stop() {
        guard let process, process.isRunning else { return }
        kill(process.processIdentifier, SIGKILL)
        waitBriefly(process)
    }

    // MARK: - Starting

    private var hostsFile: URL { directory.appendingPathComponent("hosts/hosts") }
    private var logFile: URL { directory.appendingPathComponent("dnsmasq.log") }

    private func writeHosts(_ hosts: [(address: String, name: String)]) throws {
        // dnsmasq ignores files whose names start with a dot, so the new file appears whole, by the rename.
        let temporary = directory.appendingPathComponent("hosts/.hosts.new")
        try hosts.map { "\($0.address) \($0.name)\n" }.joined().write(to: temporary, atomically: false, encoding: .utf8)
        guard rename(temporary.path, hostsFile.path) == 0 else { throw TestSocketError("rename \(temporary.path)") }
    }

    /// How many times the log says the hosts file was read.
    private func readCount() -> Int {
        log.components(separatedBy: "read \(hostsFile.path) ").count - 1
    }

    private func arguments() -> [String] {
        var arguments = ["-k", "--conf-file=/dev/null", "--port=\(port)", "--listen-address=127.0.0.1", "--bind-interfaces",
                         "--no-resolv", "--no-hosts", "--hostsdir=\(directory.appendingPathComponent("hosts").path)",
                         "--local-ttl=\(ttl)", "--local=/\(domain)/", "--pid-file=\(directory.appendingPathComponent("dnsmasq.pid").path)",
                         "--log-facility=\(logFile.path)"]
        // As root, dnsmasq would switch to the user nobody, which may not exist or not read the test's directory.
        if geteuid() == 0 { arguments.append("--user=root") }
        for record in srv {
            arguments.append("--srv-host=\(record.name),\(record.target),\(record.port),\(record.priority),\(record.weight)")
        }
        return arguments
    }

    /// Starts dnsmasq and waits until it answers. A new port is picked per attempt unless `samePort`; a
    /// port another process took meanwhile makes dnsmasq exit at once, and the next attempt follows.
    private func start(samePort: Bool) throws {
        guard FileManager.default.isExecutableFile(atPath: Self.executable) else {
            throw TestSocketError("\(Self.executable) is missing: install dnsmasq-base (make test does)", errno: 0)
        }
        var problem = ""
        for attempt in 0..<8 {
            if !samePort { port = try Self.freePort() } else if attempt > 0 { usleep(100_000) }
            let process = Process()
            process.executableURL = URL(fileURLWithPath: Self.executable)
            process.arguments = arguments()
            let errors = directory.appendingPathComponent("stderr")
            _ = FileManager.default.createFile(atPath: errors.path, contents: nil)
            process.standardError = try FileHandle(forWritingTo: errors)
            process.standardOutput = FileHandle.nullDevice
            try process.run()
            self.process = process
            if try waitUntilAnswering(process, timeout: 10) { return }
            stop()
            problem = (try? String(contentsOf: errors, encoding: .utf8)) ?? ""
        }
        throw TestSocketError("dnsmasq did not start on 127.0.0.1:\(port): \(problem)\(log)", errno: 0)
    }

    /// True once a query gets an answer; false if dnsmasq exited first.
    private func waitUntilAnswering(_ process: Process, timeout: Double) throws -> Bool {
        let deadline = Date().addingTimeInterval(timeout)
        while Date() < deadline {
            if !process.isRunning { return false }
            if Self.answers(port: port, name: "ready.\(domain)") { return true }
        }
        throw TestSocketError("dnsmasq on 127.0.0.1:\(port) did not answer within \(timeout)s; log:\n\(log)", errno: 0)
    }

    /// Sends one A query and waits up to 100 ms for the response with its id.
    static func answers(port: UInt16, name: String) -> Bool {
        let fd = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { return false }
        defer { close(fd) }
        var tv = timeval(tv_sec: 0, tv_usec: 100_000)
        setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, socklen_t(MemoryLayout<timeval>.size))
        var address = loopback(port: port)
        let connected = withUnsafePointer(to: &address) {
            $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { connect(fd, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
        }
        let id = UInt16.random(in: 0...UInt16.max)
        guard connected == 0, let query = try? DNSMessage.query(id: id, name: name, type: .a, udpPayloadSize: nil),
              send(fd, query, query.count, 0) == query.count else { return false }
        var buffer = [UInt8](repeating: 0, count: 1500)
        let deadline = Date().addingTimeInterval(0.1)
        while Date() < deadline {
            let n = recv(fd, &buffer, buffer.count, 0)
            if n < 0 && errno == EINTR { continue }
            // ECONNREFUSED: nothing listens yet; the caller asks again.
            if n < 0 { usleep(20_000); return false }
            if n >= 2 && UInt16(buffer[0]) << 8 | UInt16(buffer[1]) == id { return true }
        }
        return false
    }

    /// A loopback port free for both UDP and TCP now (dnsmasq takes both).
    static func freePort() throws -> UInt16 {
        for _ in 0..<20 {
            let udp = socket(AF_INET, Int32(SOCK_DGRAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard udp >= 0 else { throw TestSocketError("socket") }
            defer { close(udp) }
            var address = loopback(port: 0)
            var length = socklen_t(MemoryLayout<sockaddr_in>.size)
            let bound = withUnsafeMutablePointer(to: &address) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(udp, $0, length) == 0 && getsockname(udp, $0, &length) == 0 }
            }
            guard bound else { continue }
            let port = UInt16(bigEndian: address.sin_port)
            let tcp = socket(AF_INET, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
            guard tcp >= 0 else { throw TestSocketError("socket") }
            defer { close(tcp) }
            var one: Int32 = 1
            setsockopt(tcp, SOL_SOCKET, SO_REUSEADDR, &one, socklen_t(MemoryLayout<Int32>.size))
            var tcpAddress = loopback(port: port)
            let tcpBound = withUnsafePointer(to: &tcpAddress) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { bind(tcp, $0, socklen_t(MemoryLayout<sockaddr_in>.size)) == 0 }
            }
            if tcpBound { return port }
        }
        throw TestSocketError("no free loopback port for dnsmasq", errno: 0)
    }
}
