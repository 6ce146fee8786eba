import FulcrumCore
import Testing

@Suite struct EtcdRecordTests {
    static let key = "/fulcrum/pools/redis/a"

    func backend(_ text: String) -> Result<FulcrumConfig.Backend, Etcd.RecordError> {
        Etcd.backend(key: Self.key, value: Array(text.utf8))
    }

    func problem(_ text: String) -> String? {
        guard case .failure(let error) = backend(text) else { return nil }
        return error.description
    }

    @Test func readsEveryFieldWithTheConfigurationsDefaults() throws {
        let full = try backend(#"{"address": "10.0.0.5:6379", "weight": 7, "priority": 2, "state": "drain", "max_connections": 500}"#).get()
        #expect(full.address.description == "10.0.0.5:6379")
        #expect(full.weight == 7)
        #expect(full.priority == 2)
        #expect(full.state == .drain)
        #expect(full.maxConnections == 500)
        let minimal = try backend(#"{"address":"[fd00::5]:6379"}"#).get()
        #expect(minimal == FulcrumConfig.Backend(address: minimal.address), "weight 1, priority 0, enabled, no limit")
        #expect(minimal.address.description == "[fd00::5]:6379")
        #expect(try backend(#"{"address":"localhost:80"}"#).get().address.description == "127.0.0.1:80")
    }

    @Test func writesWhatItReads() throws {
        let backend = FulcrumConfig.Backend(address: .ipv4((10, 0, 0, 5), port: 6379), weight: 3, priority: 1, state: .drain)
        let text = String(decoding: Etcd.recordValue(backend), as: UTF8.self)
        #expect(text == #"{"address":"10.0.0.5:6379","weight":3,"priority":1,"state":"drain"}"#)
        #expect(try self.backend(text).get() == backend)
        var limited = backend
        limited.maxConnections = 9
        #expect(try Etcd.backend(key: "k", value: Etcd.recordValue(limited)).get() == limited)
    }

    @Test func namesTheKeyTheProblemAndTheFix() {
        #expect(problem("") == #"etcd key /fulcrum/pools/redis/a: the value is empty; write a JSON object such as {"address": "10.0.0.5:6379", "weight": 1}"#)
        #expect(problem("10.0.0.5:6379")?.contains("the value is not JSON") == true)
        #expect(problem(#"["10.0.0.5:6379"]"#)?.contains("the value is a list, not a JSON object") == true)
        #expect(problem(#"{"weight": 2}"#) == #"etcd key /fulcrum/pools/redis/a: the value has no "address"; add the backend's IP address and port, e.g. {"address": "10.0.0.5:6379", "weight": 1}"#)
        #expect(problem(#"{"address": "redis.internal:6379"}"#)
            == #"etcd key /fulcrum/pools/redis/a: "address" names the host 'redis.internal'; a record holds an IP address; write the address, e.g. "10.0.0.5:6379" or "[fd00::5]:6379""#)
        #expect(problem(#"{"address": "10.0.0.5:0"}"#)?.contains("has port 0") == true)
        #expect(problem(#"{"address": "10.0.0.5:70000"}"#)?.contains("port 70000 is out of range") == true)
        #expect(problem(#"{"address": "10.0.0.5"}"#)?.contains("is not an IP address and port") == true)
        #expect(problem(#"{"address": 6379}"#)?.contains(#""address" is the number 6379, not a string"#) == true)
        #expect(problem(#"{"address": "10.0.0.5:6379", "wieght": 2}"#)
            == "etcd key /fulcrum/pools/redis/a: unknown field 'wieght'; did you mean 'weight'? the fields are address, weight, priority, state, max_connections")
        #expect(problem(#"{"address": "10.0.0.5:6379", "weight": 0}"#)
            == #"etcd key /fulcrum/pools/redis/a: "weight" 0 is out of range; use 1 to 1000 (to take a backend out of rotation, set "state": "drain" or delete its key)"#)
        #expect(problem(#"{"address": "10.0.0.5:6379", "weight": "2"}"#)?.contains(#""weight" is the string "2", not an integer"#) == true)
        #expect(problem(#"{"address": "10.0.0.5:6379", "weight": 1.5}"#)?.contains("not an integer") == true)
        #expect(problem(#"{"address": "10.0.0.5:6379", "priority": 101}"#)?.contains("use 0 to 100") == true)
        #expect(problem(#"{"address": "10.0.0.5:6379", "max_connections": 0}"#)?.contains("use 1 to 10000000") == true)
        #expect(problem(#"{"address": "10.0.0.5:6379", "state": "up"}"#)
            == #"etcd key /fulcrum/pools/redis/a: "state" "up" is not a backend state; use one of enabled, drain, disabled"#)
        #expect(problem(#"{"address": "10.0.0.5:6379", "address": "10.0.0.6:6379"}"#)?.contains("field 'address' appears twice") == true)
    }

    @Test func hostileValuesGiveAnErrorNeverACrash() {
        let values: [[UInt8]] = [
            [0xff, 0xfe], Array(String(repeating: "[", count: 10_000).utf8), Array(#"{"address": null}"#.utf8),
            Array(#"{"address": "[::1:6379"}"#.utf8), Array(#"{"address": "1.2.3.4:6379", "weight": 99999999999999999999}"#.utf8),
            Array(#"{"address": "1.2.3.4:6379", "state": null}"#.utf8), [0], Array("{}".utf8),
        ]
        for value in values {
            guard case .failure = Etcd.backend(key: "k", value: value) else {
                Issue.record("accepted \(String(decoding: value, as: UTF8.self))")
                continue
            }
        }
    }

    @Test func endpointsAreHTTPURLsWithAnIPAddress() throws {
        #expect(try Etcd.endpoint("http://127.0.0.1:2379").get().description == "127.0.0.1:2379")
        #expect(try Etcd.endpoint("http://10.0.0.1").get().description == "10.0.0.1:2379")
        #expect(try Etcd.endpoint("http://localhost:22379/").get().description == "127.0.0.1:22379")
        #expect(try Etcd.endpoint("http://[::1]:2379").get().description == "[::1]:2379")
        #expect(try Etcd.endpoint("http://[::1]").get().description == "[::1]:2379")
        func refusal(_ text: String) -> String? {
            guard case .failure(let error) = Etcd.endpoint(text) else { return nil }
            return error.description
        }
        #expect(refusal("https://127.0.0.1:2379")?.hasPrefix("TLS to etcd is not supported yet") == true)
        #expect(refusal("http://user:pw@127.0.0.1:2379")?.hasPrefix("etcd authentication is not supported yet") == true)
        #expect(refusal("127.0.0.1:2379") == "'127.0.0.1:2379' is not an http:// URL; write it as http://127.0.0.1:2379")
        #expect(refusal("http://etcd.internal:2379")?.hasPrefix("'etcd.internal' is a host name") == true)
        #expect(refusal("http://127.0.0.1:2379/v3") != nil)
        #expect(refusal("http://127.0.0.1:0") != nil)
    }
}

@Suite struct RegistrationTests {
    func options(_ change: (inout Registration.Options) -> Void = { _ in }) -> Registration.Options {
        var options = Registration.Options()
        options.etcd = "http://127.0.0.1:2379,http://127.0.0.2:2379"
        options.prefix = "/fulcrum/pools/redis/"
        options.address = "10.0.0.5:6379"
        change(&options)
        return options
    }

    func problems(_ change: (inout Registration.Options) -> Void) -> [String] {
        guard case .failure(let problems) = Registration.parse(options(change)) else { return [] }
        return problems.messages
    }

    @Test func defaultsGiveATCPCheckATTLOfThreeSecondsAndTheAddressAsTheKey() throws {
        let registration = try Registration.parse(options()).get()
        #expect(registration.endpoints.map(\.description) == ["127.0.0.1:2379", "127.0.0.2:2379"])
        #expect(registration.key == "/fulcrum/pools/redis/10.0.0.5:6379")
        #expect(registration.backend == FulcrumConfig.Backend(address: .ipv4((10, 0, 0, 5), port: 6379)))
        #expect(registration.ttl == .seconds(3))
        #expect(registration.keepaliveInterval == .seconds(1))
        #expect(registration.drainWait == .seconds(2))
        #expect(registration.health.check == .tcp)
        #expect(registration.health.interval == .seconds(1))
        #expect(registration.health.timeout == .seconds(1))
        #expect(registration.health.rise == 2)
        #expect(registration.health.fall == 2)
    }

    @Test func buildsTheSameChecksAsTheConfigurationFile() throws {
        let redis = try Registration.parse(options {
            $0.check = "send_expect"; $0.send = "PING\\r\\n"; $0.expect = "+PONG"; $0.key = "redis-1"; $0.weight = 5
        }).get()
        #expect(redis.health.check == .sendExpect(send: Array("PING\r\n".utf8), expect: .prefix(Array("+PONG".utf8))))
        #expect(redis.key == "/fulcrum/pools/redis/redis-1")
        #expect(redis.backend.weight == 5)
        let http = try Registration.parse(options { $0.check = "http"; $0.httpPath = "/healthz"; $0.httpStatus = "200,204-206" }).get()
        #expect(http.health.check == .http(path: "/healthz", host: nil, statuses: [200...200, 204...206]))
        let regex = try Registration.parse(options { $0.check = "send_expect"; $0.sendHex = "50494e470d0a"; $0.expectRegex = "^\\+PONG" }).get()
        #expect(regex.health.check == .sendExpect(send: Array("PING\r\n".utf8), expect: .regex("^\\+PONG")))
    }

    @Test func reportsEveryProblemWithItsFix() {
        #expect(problems { $0.etcd = "" } == ["--etcd is missing; name etcd's client URL, e.g. --etcd http://127.0.0.1:2379"])
        #expect(problems { $0.etcd = "https://10.0.0.1:2379" }.first?.hasPrefix("--etcd https://10.0.0.1:2379: TLS to etcd is not supported yet") == true)
        #expect(problems { $0.prefix = "/fulcrum/pools/redis" }
            == ["--prefix /fulcrum/pools/redis does not end with '/'; end it with one, as the pool's prefix does, e.g. /fulcrum/pools/redis/"])
        #expect(problems { $0.address = "redis.internal:6379" }
            == ["--address redis.internal:6379 names the host 'redis.internal'; the record holds an IP address: write it, e.g. 10.0.0.5:6379"])
        #expect(problems { $0.address = "0.0.0.0:6379" }.first?.contains("wildcard") == true)
        #expect(problems { $0.address = "" }.first?.hasPrefix("--address is missing") == true)
        #expect(problems { $0.ttl = "1s" } == ["--ttl 1s is out of range; use a duration from 2s to 24h"])
        #expect(problems { $0.ttl = "2500ms" }.first?.contains("not a whole number of seconds") == true)
        #expect(problems { $0.ttl = "3" } == ["--ttl '3' is not a duration; use a duration such as 250ms, 2s, 5m or 1h"])
        #expect(problems { $0.weight = 0 } == ["--weight 0 is out of range; use 1 to 1000"])
        #expect(problems { $0.rise = 0 } == ["--rise 0 is out of range; use 1 to 100"])
        #expect(problems { $0.check = "ping" } == ["--check ping is not a check; use tcp, send_expect or http"])
        #expect(problems { $0.send = "PING" }
            == ["--send applies to --check send_expect, not tcp; drop it or use --check send_expect"])
        #expect(problems { $0.check = "send_expect" }.first?.hasPrefix("--check send_expect needs --expect or --expect-regex") == true)
        #expect(problems { $0.check = "http"; $0.httpStatus = "2xx" }.first?.hasPrefix("--http-status '2xx'") == true)
        #expect(problems { $0.weight = 0; $0.ttl = "1s"; $0.prefix = "" }.count == 3, "every problem at once")
    }
}
