import FulcrumCore
#if canImport(Glibc)
import Glibc
#endif

/// A tiny blocking HTTP/1.0 client for the admin API: one `GET`, one connection, the whole answer read
/// until the server closes. Every step is bounded by one deadline.
struct AdminClient {
    struct Failure: Error, CustomStringConvertible {
        let description: String
    }

    struct Response {
        let status: Int
        let body: [UInt8]
    }

    let address: SocketAddress
    /// Seconds for the whole exchange: connect, send, read.
    let timeout: Double

    /// `GET path`; throws a failure that says what went wrong and what to check.
    func get(_ path: String) throws(Failure) -> Response {
        let deadline = Self.now() + timeout
        let fd = try connect(deadline: deadline)
        defer { close(fd) }
        let request = Array("GET \(path) HTTP/1.0\r\nHost: \(address)\r\nAccept: application/json\r\nUser-Agent: fulcrum-status\r\n\r\n".utf8)
        var sent = 0
        while sent < request.count {
            try wait(fd, for: Int16(POLLOUT), until: deadline, doing: "sending the request")
            let n = request[sent...].withUnsafeBytes { send(fd, $0.baseAddress, $0.count, Int32(MSG_NOSIGNAL)) }
            if n < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                throw Failure(description: "cannot send to the admin API at \(address): \(Self.errorText(errno))")
            }
            sent += n
        }
        var answer: [UInt8] = []
        var chunk = [UInt8](repeating: 0, count: 16384)
        while true {
            try wait(fd, for: Int16(POLLIN), until: deadline, doing: "reading the answer")
            let n = chunk.withUnsafeMutableBytes { recv(fd, $0.baseAddress, $0.count, 0) }
            if n < 0 {
                if errno == EINTR || errno == EAGAIN { continue }
                throw Failure(description: "the admin API at \(address) broke off its answer: \(Self.errorText(errno))")
            }
            if n == 0 { break }
            answer += chunk[..<n]
            if answer.count > 64 << 20 { throw Failure(description: "the answer from \(address) is over 64 MiB") }
        }
        return try Self.parse(answer, from: address)
    }

    // MARK: - Steps

    private func connect(deadline: Double) throws(Failure) -> Int32 {
        let family = if case .ipv4 = address { AF_INET } else { AF_INET6 }
        let fd = socket(family, Int32(SOCK_STREAM.rawValue) | Int32(SOCK_NONBLOCK.rawValue) | Int32(SOCK_CLOEXEC.rawValue), 0)
        guard fd >= 0 else { throw Failure(description: "cannot open a socket: \(Self.errorText(errno))") }
        let result = withSockaddr { Glibc.connect(fd, $0, $1) }
        if result != 0 && errno != EINPROGRESS {
            let code = errno
            close(fd)
            throw unreachable(code)
        }
        do {
            try wait(fd, for: Int16(POLLOUT), until: deadline, doing: "connecting")
        } catch {
            close(fd)
            throw error
        }
        var code: Int32 = 0
        var length = socklen_t(MemoryLayout<Int32>.size)
        getsockopt(fd, SOL_SOCKET, SO_ERROR, &code, &length)
        if code != 0 {
            close(fd)
            throw unreachable(code)
        }
        return fd
    }

    private func unreachable(_ code: Int32) -> Failure {
        let hint = code == ECONNREFUSED
            ? "nothing listens there: is fulcrum running, with admin: {listen: \(address)} in its configuration?"
            : "check the address (--admin) and that fulcrum runs"
        return Failure(description: "cannot connect to the admin API at \(address): \(Self.errorText(code)) (\(hint))")
    }

    private func wait(_ fd: Int32, for events: Int16, until deadline: Double, doing what: String) throws(Failure) {
        while true {
            let left = deadline - Self.now()
            if left <= 0 {
                throw Failure(description: "the admin API at \(address) did not answer within \(Self.seconds(timeout)) (\(what))")
            }
            var entry = pollfd(fd: fd, events: events, revents: 0)
            let ready = poll(&entry, 1, Int32(min(left * 1000, 60_000).rounded(.up)))
            if ready > 0 { return }
            if ready < 0 && errno != EINTR {
                throw Failure(description: "poll: \(Self.errorText(errno))")
            }
        }
    }

    private func withSockaddr<R>(_ body: (UnsafePointer<sockaddr>, socklen_t) -> R) -> R {
        switch address {
        case .ipv4(let bytes, let port):
            var storage = sockaddr_in()
            storage.sin_family = sa_family_t(AF_INET)
            storage.sin_port = port.bigEndian
            withUnsafeMutableBytes(of: &storage.sin_addr) { raw in
                raw[0] = bytes.0; raw[1] = bytes.1; raw[2] = bytes.2; raw[3] = bytes.3
            }
            return withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in>.size)) }
            }
        case .ipv6(let bytes, let port):
            var storage = sockaddr_in6()
            storage.sin6_family = sa_family_t(AF_INET6)
            storage.sin6_port = port.bigEndian
            withUnsafeMutableBytes(of: &storage.sin6_addr) { raw in
                for i in 0..<16 { raw[i] = bytes[i] }
            }
            return withUnsafePointer(to: &storage) {
                $0.withMemoryRebound(to: sockaddr.self, capacity: 1) { body($0, socklen_t(MemoryLayout<sockaddr_in6>.size)) }
            }
        }
    }

    // MARK: - Answer

    /// The status code and body of an HTTP/1.x answer.
    static func parse(_ answer: [UInt8], from address: SocketAddress) throws(Failure) -> Response {
        let separator: [UInt8] = [13, 10, 13, 10]
        guard let end = (0..<max(0, answer.count - 3)).first(where: { Array(answer[$0..<$0 + 4]) == separator }) else {
            throw Failure(description: "\(address) did not answer with HTTP (is it the admin API, not a listener?)")
        }
        let head = String(decoding: answer[..<end], as: UTF8.self)
        let statusLine = head.split(separator: "\r\n", maxSplits: 1).first ?? ""
        let fields = statusLine.split(separator: " ")
        guard fields.count >= 2, fields[0].hasPrefix("HTTP/1."), let status = Int(fields[1]) else {
            throw Failure(description: "\(address) did not answer with HTTP: '\(statusLine.prefix(80))'")
        }
        return Response(status: status, body: Array(answer[(end + 4)...]))
    }

    static func now() -> Double {
        var spec = timespec()
        clock_gettime(CLOCK_MONOTONIC, &spec)
        return Double(spec.tv_sec) + Double(spec.tv_nsec) / 1e9
    }

    static func seconds(_ value: Double) -> String {
        value == value.rounded() ? "\(Int(value))s" : "\(value)s"
    }

    static func errorText(_ code: Int32) -> String { String(cString: strerror(code)) }
}
