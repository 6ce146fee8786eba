import EventLoop
import Foundation
import Glibc
import Testing

/// The inode a descriptor refers to: a passed descriptor is a new number for the same open file.
private func inode(_ fd: Int32) -> UInt {
    var info = stat()
    return fstat(fd, &info) == 0 ? UInt(info.st_ino) : 0
}

private func temporaryPath(_ name: String) -> String {
    "/tmp/fulcrum-\(getpid())-\(UUID().uuidString.prefix(8))-\(name)"
}

@Suite(.timeLimit(.minutes(1)))
struct DescriptorPassingTests {
    /// Hundreds of descriptors cross in one message, although Linux carries at most 253 per `sendmsg`:
    /// every one arrives, in order, as the same open file, close-on-exec, with the payload intact.
    @Test func sixHundredDescriptorsArriveInOrderWithThePayload() throws {
        let path = temporaryPath("pass.sock")
        let listening = try UnixSocket.listen(path: path)
        defer {
            Socket.close(listening)
            unlink(path)
        }
        var info = stat()
        #expect(stat(path, &info) == 0 && info.st_mode & 0o777 == 0o600, "the socket file is private to its user")
        let client = try UnixSocket.connect(path: path, timeoutMicroseconds: 5_000_000)
        // Closed once: tests run in parallel in one process, so a second close could close another test's
        // descriptor that took the same number meanwhile.
        var clientOpen = true
        defer { if clientOpen { Socket.close(client) } }
        let server = try #require(try UnixSocket.accept(listening, timeoutMicroseconds: 5_000_000))
        defer { Socket.close(server) }

        var pipes: [Int32] = []
        for _ in 0..<300 {
            let ends = try UnixSocket.pipe()
            pipes += [ends.read, ends.write]
        }
        defer { for fd in pipes { Socket.close(fd) } }
        let payload = Array("listeners: \(String(repeating: "x", count: 5000))".utf8)
        // The sender blocks once the socket buffer is full: send from another thread.
        let all = pipes
        let sent = Thread { try? UnixSocket.send(server, payload: payload, descriptors: all) }
        sent.start()
        let message = try #require(try UnixSocket.receive(client))
        defer { for fd in message.descriptors { Socket.close(fd) } }
        #expect(message.payload == payload)
        #expect(message.descriptors.count == 600)
        #expect(message.descriptors.map(inode) == pipes.map(inode))
        #expect(Set(message.descriptors).isDisjoint(with: pipes), "the receiver gets its own descriptors")
        #expect(message.descriptors.allSatisfy { fcntl($0, F_GETFD) & FD_CLOEXEC != 0 })

        // A message without descriptors, then the end of the connection.
        try UnixSocket.send(client, payload: Array("ready".utf8))
        #expect(try UnixSocket.receive(server)?.payload == Array("ready".utf8))
        Socket.close(client)
        clientOpen = false
        #expect(try UnixSocket.receive(server) == nil)
    }

    @Test func aStaleSocketFileIsReplacedAndErrorsNameThePath() throws {
        let path = temporaryPath("stale.sock")
        let first = try UnixSocket.listen(path: path)
        Socket.close(first) // the file stays, as after a crash
        let second = try UnixSocket.listen(path: path)
        Socket.close(second)
        unlink(path)

        #expect {
            _ = try UnixSocket.connect(path: path, timeoutMicroseconds: 1_000_000)
        } throws: { error in
            "\(error)" == "connect \(path): No such file or directory"
        }
        let long = "/tmp/" + String(repeating: "y", count: 120)
        #expect {
            _ = try UnixSocket.listen(path: long)
        } throws: { error in
            "\(error)".contains("is 125 bytes long; at most 107 fit")
        }
    }

    /// A peer that closes mid-message is an error, not a short message.
    @Test func aTruncatedMessageIsAnError() throws {
        var pair: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0)
        defer { Socket.close(pair[1]) }
        // A frame header announcing 100 bytes, followed by 3.
        var bytes: [UInt8] = [0, 0, 0, 100, 0, 0, 0, 0, 1, 2, 3]
        #expect(write(pair[0], &bytes, bytes.count) == bytes.count)
        Socket.close(pair[0])
        #expect {
            _ = try UnixSocket.receive(pair[1])
        } throws: { error in
            "\(error)".contains("closed the connection mid-message")
        }
    }

    /// The kernel names the process at the other end of a Unix socket, on both sides of a connection.
    @Test func peerCredentialsNameTheProcessAtTheOtherEnd() throws {
        var pair: [Int32] = [0, 0]
        #expect(socketpair(AF_UNIX, Int32(SOCK_STREAM.rawValue), 0, &pair) == 0)
        defer { pair.forEach(Socket.close) }
        let me = UnixSocket.PeerCredentials(pid: getpid(), uid: geteuid(), gid: getegid())
        #expect(try UnixSocket.peerCredentials(pair[0]) == me)
        #expect(try UnixSocket.peerCredentials(pair[1]) == me)
        #expect {
            _ = try UnixSocket.peerCredentials(-1)
        } throws: { error in
            "\(error)".contains("getsockopt(SO_PEERCRED)")
        }
    }
}
