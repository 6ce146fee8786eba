import EventLoop
import FulcrumCore

/// One DNS query over UDP (for SRV records, which evdns cannot ask for): each try sends the query with a
/// fresh random 16-bit id from a fresh socket (a new random source port) to the next name server, and
/// takes only a response that matches the id and the question. A try ends with an answer, a timeout (its
/// share of `dns.timeout`), a refused port (ICMP unreachable on the connected socket) or an error answer
/// (SERVFAIL, REFUSED, ...); the last three move on to the next try. NOERROR and NXDOMAIN are answers.
final class DNSQuery {
    private weak var service: DNSService?
    private let base: EventBase
    private let servers: [SocketAddress]
    private let name: String
    private let type: DNSMessage.RecordType
    private let tries: Int
    private let tryTimeout: Duration
    private var attempt = 0
    private var id: UInt16 = 0
    private var socket: Datagram?
    private var timer: Timer?
    /// What went wrong with each try, for the failure's text.
    private var problems: [String] = []
    private var timedOutEverywhere = true
    private var completion: ((Result<DNSMessage, DNSResolver.Failure>) -> Void)?

    init(service: DNSService, name: String, type: DNSMessage.RecordType,
         completion: @escaping (Result<DNSMessage, DNSResolver.Failure>) -> Void) {
        self.service = service
        base = service.base
        servers = service.servers
        self.name = name
        self.type = type
        tries = service.tries
        tryTimeout = service.tryTimeout
        self.completion = completion
        timer = Timer(base: base) { [unowned self] in self.timedOut() }
    }

    deinit { socket?.close() }

    /// The first try starts on the next turn of the loop, so the completion never runs inside `query()`.
    func start() {
        if service?.closed ?? true {
            problems = ["the resolver is closed"]
            timedOutEverywhere = false
            attempt = tries
        }
        timer?.schedule(after: 0)
    }

    /// The completion will not be called.
    func cancel() {
        completion = nil
        socket?.close()
        socket = nil
        timer?.cancel()
        service?.forget(self)
    }

    private var server: SocketAddress { servers[attempt % servers.count] }

    private func send() {
        guard completion != nil else { return }
        guard attempt < tries else { return finish() }
        let bytes: [UInt8]
        id = UInt16.random(in: 0...UInt16.max)
        do throws(DNSMessageError) {
            bytes = try DNSMessage.query(id: id, name: name, type: type)
        } catch {
            problems = ["\(error)"]
            timedOutEverywhere = false
            attempt = tries
            return finish()
        }
        do throws(SystemError) {
            let socket = try Datagram(base: base, peer: Endpoint(server)) { [unowned self] in self.readable() }
            self.socket = socket
            try socket.send(bytes)
            timer?.schedule(after: tryTimeout)
        } catch {
            failedTry("\(server): \(error)")
        }
    }

    private func timedOut() {
        if socket == nil { return send() } // the first try, or the end of a closed service
        problems.append("\(server): no answer within \(tryTimeout.configText)")
        next()
    }

    private func readable() {
        while let socket {
            let bytes: [UInt8]
            do throws(SystemError) {
                guard let datagram = try socket.receive() else { return }
                bytes = datagram
            } catch {
                return failedTry("\(server): \(errnoText(error.errno))")
            }
            // Only the answer to this try counts; anything else (a late answer to an earlier try, noise) is
            // dropped and the try keeps waiting.
            guard bytes.count >= 2, UInt16(bytes[0]) << 8 | UInt16(bytes[1]) == id else { continue }
            let message: DNSMessage
            do throws(DNSMessageError) {
                message = try DNSMessage(parsing: bytes)
            } catch {
                return failedTry("\(server): malformed answer: \(error)")
            }
            guard message.header.isResponse, message.questions.count == 1,
                  DNSMessage.sameName(message.questions[0].name, name), message.questions[0].type == type else { continue }
            switch message.header.rcode {
            case .noError: return finish(.success(message))
            case .nameError: return finish(.failure(.noSuchName))
            case let rcode: return failedTry("\(server) answered \(rcode)")
            }
        }
    }

    private func failedTry(_ problem: String) {
        problems.append(problem)
        timedOutEverywhere = false
        next()
    }

    private func next() {
        socket?.close()
        socket = nil
        timer?.cancel()
        attempt += 1
        send()
    }

    private func finish(_ result: Result<DNSMessage, DNSResolver.Failure>? = nil) {
        guard let completion else { return }
        cancel()
        var unique: [String] = []
        for problem in problems where !unique.contains(problem) { unique.append(problem) }
        completion(result ?? (timedOutEverywhere ? .failure(.timeout) : .failure(.serverFailure(unique.joined(separator: "; ")))))
    }
}
