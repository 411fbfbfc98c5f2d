import Mongo

/// SplitMix64: small, fast and the same on every platform, so a seed means the same data.
public struct SplitMix64: RandomNumberGenerator, Sendable {
    private var state: UInt64

    public init(seed: UInt64) { state = seed }

    public mutating func next() -> UInt64 {
        state &+= 0x9E37_79B9_7F4A_7C15
        var z = state
        z = (z ^ (z >> 30)) &* 0xBF58_476D_1CE4_E5B9
        z = (z ^ (z >> 27)) &* 0x94D0_49BB_1331_11EB
        return z ^ (z >> 31)
    }
}

/// The benchmark dataset of shared/DATA.md. Each user is generated from (seed, id) alone,
/// so any user can be regenerated on its own, in any order, byte for byte.
public struct UserGenerator: Sendable {
    public let seed: UInt64
    /// "Generation time": fixed, so that a seed alone determines every byte.
    public static let generatedAtMillis: Int64 = 1_735_689_600_000  // 2025-01-01T00:00:00Z
    static let fiveYearsMillis: Int64 = 5 * 365 * 86_400_000

    public init(seed: UInt64) { self.seed = seed }

    static let firstNames = ["James", "Mary", "John", "Patricia", "Robert", "Jennifer", "Michael", "Linda",
                             "William", "Elizabeth", "David", "Barbara", "Richard", "Susan", "Joseph"]
    static let lastNames = ["Smith", "Johnson", "Williams", "Brown", "Jones", "Garcia", "Miller", "Davis",
                            "Rodriguez", "Martinez", "Hernandez", "Lopez", "Gonzalez", "Wilson"]
    static let places = [("New York", "NY"), ("Los Angeles", "CA"), ("Chicago", "IL"), ("Houston", "TX"),
                         ("Phoenix", "AZ"), ("Philadelphia", "PA"), ("San Antonio", "TX"), ("San Diego", "CA"),
                         ("Dallas", "TX"), ("Seattle", "WA"), ("Denver", "CO"), ("Boston", "MA")]
    static let streets = ["Main St", "Oak Ave", "Maple Dr", "Cedar Ln", "Pine St", "Elm St", "Park Ave", "Lake Rd"]
    static let interests = ["reading", "hiking", "cooking", "travel", "music", "photography", "gaming",
                            "cycling", "painting", "gardening", "chess", "yoga"]
    static let skills = ["Swift", "Rust", "Go", "Python", "SQL", "JavaScript", "Kubernetes", "Docker",
                         "Linux", "PostgreSQL", "MongoDB", "Terraform"]
    static let institutions = ["MIT", "Stanford University", "Harvard University", "UC Berkeley",
                               "Carnegie Mellon University", "University of Michigan", "Georgia Tech"]
    static let degrees = ["BSc Computer Science", "BA Economics", "MSc Data Science", "MBA", "PhD Physics",
                          "BEng Mechanical Engineering"]
    static let companies = ["Acme Corp", "Globex", "Initech", "Umbrella", "Hooli", "Stark Industries",
                            "Wayne Enterprises", "Cyberdyne"]
    static let positions = ["Software Engineer", "Data Analyst", "Product Manager", "Designer",
                            "DevOps Engineer", "Engineering Manager", "QA Engineer"]
    static let languages = ["en", "es", "fr", "de", "pt", "it", "ja"]
    static let timezones = ["America/New_York", "America/Chicago", "America/Denver", "America/Los_Angeles",
                            "Europe/London", "Europe/Berlin", "Asia/Tokyo", "UTC"]
    static let activityKeys = ["login", "logout", "update", "view", "delete"]
    static let activityValues = ["success", "failure", "pending"]
    static let transactionKeys = ["purchase", "refund", "payment", "transfer"]
    static let subjects = ["Hello", "Meeting tomorrow", "Invoice", "Quick question", "Re: project",
                           "Weekend plans", "Welcome!"]
    static let groupNames = ["Swift Developers", "Hiking Club", "Book Lovers", "Photography Fans",
                             "Startup Founders", "Chess Masters"]

    /// The username user `id` has (`<first>_<last>_<id>`, lower-case): unique, as the id is.
    public func username(of id: Int64) -> String {
        var rng = SplitMix64(seed: seed ^ (UInt64(bitPattern: id) &* 0xD1B5_4A32_D192_ED03))
        return Self.names(id, &rng).username
    }

    private static func names(_ id: Int64, _ rng: inout SplitMix64) -> (first: String, last: String, username: String) {
        let first = firstNames.randomElement(using: &rng)!
        let last = lastNames.randomElement(using: &rng)!
        return (first, last, "\(first)_\(last)_\(id)".lowercased())
    }

    /// The document of user `id`.
    public func document(id: Int64) -> BSONDocument {
        var rng = SplitMix64(seed: seed ^ (UInt64(bitPattern: id) &* 0xD1B5_4A32_D192_ED03))
        let doc = BSONDocument()
        let w = doc.writer
        let (first, last, username) = Self.names(id, &rng)
        let email = "\(username)@example.com"
        if let small = Int32(exactly: id) { w.append("_id", small) } else { w.append("_id", id) }
        w.append("username", username)
        w.append("email", email)
        w.append("firstName", first)
        w.append("lastName", last)
        w.append("age", Int32.random(in: 18...80, using: &rng))
        w.append("createdAt", dateTimeMillis: pastMillis(&rng))
        w.append("updatedAt", dateTimeMillis: Self.generatedAtMillis)
        w.appendDocument("address") { a in
            let place = Self.places.randomElement(using: &rng)!
            a.append("street", "\(Int.random(in: 1...9999, using: &rng)) \(Self.streets.randomElement(using: &rng)!)")
            a.append("city", place.0)
            a.append("state", place.1)
            a.append("zipCode", padded(Int.random(in: 0...99999, using: &rng), 5))
            a.append("country", "USA")
            a.appendDocument("coordinates") { c in
                c.append("lat", Double.random(in: 25...48, using: &rng))
                c.append("lng", Double.random(in: -125...(-65), using: &rng))
            }
        }
        w.appendDocument("profile") { p in
            p.append("bio", letters(80, &rng))
            p.appendArray("interests") { a in
                for i in 0..<Int.random(in: 2...5, using: &rng) { a.append(String(i), Self.interests.randomElement(using: &rng)!) }
            }
            p.appendArray("skills") { a in
                for i in 0..<Int.random(in: 2...6, using: &rng) { a.append(String(i), Self.skills.randomElement(using: &rng)!) }
            }
            p.appendArray("education") { a in
                for i in 0..<Int.random(in: 1...3, using: &rng) {
                    a.appendDocument(String(i)) { e in
                        e.append("institution", Self.institutions.randomElement(using: &rng)!)
                        e.append("degree", Self.degrees.randomElement(using: &rng)!)
                        e.append("year", Int32.random(in: 1990...2023, using: &rng))
                        e.append("description", letters(50, &rng))
                    }
                }
            }
            p.appendArray("experience") { a in
                for i in 0..<Int.random(in: 1...4, using: &rng) {
                    a.appendDocument(String(i)) { e in
                        let start = Int.random(in: 2000...2023, using: &rng)
                        let ongoing = Bool.random(using: &rng)
                        e.append("company", Self.companies.randomElement(using: &rng)!)
                        e.append("position", Self.positions.randomElement(using: &rng)!)
                        e.append("duration", ongoing ? "\(start)-Present" : "\(start)-\(start + Int.random(in: 1...5, using: &rng))")
                        e.append("description", letters(50, &rng))
                    }
                }
            }
        }
        w.appendDocument("preferences") { p in
            p.append("language", Self.languages.randomElement(using: &rng)!)
            p.append("timezone", Self.timezones.randomElement(using: &rng)!)
            p.appendDocument("notifications") { n in
                n.append("email", Bool.random(using: &rng))
                n.append("push", Bool.random(using: &rng))
                n.append("sms", Bool.random(using: &rng))
            }
            p.appendArray("settings") { a in
                for i in 0..<Int.random(in: 1...5, using: &rng) {
                    entry(a, i, key: "setting_\(i)", value: letters(10, &rng), metadata: "{}", &rng)
                }
            }
        }
        w.appendArray("activityLog") { a in
            for i in 0..<Int.random(in: 5...20, using: &rng) {
                let key = Self.activityKeys.randomElement(using: &rng)!
                let value = Self.activityValues.randomElement(using: &rng)!
                let ip = "{\"ip\": \"192.168.\(Int.random(in: 0...255, using: &rng)).\(Int.random(in: 1...254, using: &rng))\"}"
                entry(a, i, key: key, value: value, metadata: ip, &rng)
            }
        }
        w.appendArray("transactions") { a in
            for i in 0..<Int.random(in: 0...10, using: &rng) {
                let key = Self.transactionKeys.randomElement(using: &rng)!
                let cents = Int.random(in: 100...100_000, using: &rng)
                let amount = "\(cents / 100).\(padded(cents % 100, 2))"
                entry(a, i, key: key, value: amount, metadata: "{\"amount\": \(amount)}", &rng)
            }
        }
        w.appendArray("messages") { a in
            for i in 0..<Int.random(in: 0...5, using: &rng) {
                a.appendDocument(String(i)) { m in
                    m.append("id", "msg\(id)_\(i)")
                    let sender = "\(Self.firstNames.randomElement(using: &rng)!)_\(Int.random(in: 1...100_000, using: &rng))"
                    m.append("from", sender.lowercased() + "@example.com")
                    m.append("to", email)
                    m.append("subject", Self.subjects.randomElement(using: &rng)!)
                    m.append("body", letters(100, &rng))
                    m.append("timestamp", dateTimeMillis: pastMillis(&rng))
                    m.append("read", Bool.random(using: &rng))
                    m.appendArray("attachments") { _ in }
                }
            }
        }
        w.appendDocument("socialMedia") { s in
            s.appendArray("connections") { a in
                for i in 0..<Int.random(in: 0...20, using: &rng) { a.append(String(i), "user\(Int.random(in: 1...100_000, using: &rng))") }
            }
            s.appendArray("posts") { a in
                for i in 0..<Int.random(in: 0...10, using: &rng) {
                    entry(a, i, key: "post\(i)", value: letters(50, &rng),
                          metadata: "{\"likes\": \(Int.random(in: 0...1000, using: &rng))}", &rng)
                }
            }
            s.appendArray("groups") { a in
                for i in 0..<Int.random(in: 0...3, using: &rng) {
                    a.appendDocument(String(i)) { g in
                        g.append("id", "group\(id)_\(i)")
                        g.append("name", Self.groupNames.randomElement(using: &rng)!)
                        g.append("joined", dateTimeMillis: pastMillis(&rng))
                    }
                }
            }
        }
        w.appendDocument("largeData") { l in
            for i in 1...5 { l.append("blob\(i)", letters(100, &rng)) }
        }
        return doc
    }

    private func entry(_ array: BSONWriter, _ index: Int, key: String, value: String, metadata: String,
                       _ rng: inout SplitMix64) {
        array.appendDocument(String(index)) { e in
            e.append("key", key)
            e.append("value", value)
            e.append("timestamp", dateTimeMillis: pastMillis(&rng))
            e.append("metadata", metadata)
        }
    }

    private func pastMillis(_ rng: inout SplitMix64) -> Int64 {
        Self.generatedAtMillis - Int64.random(in: 0..<Self.fiveYearsMillis, using: &rng)
    }
}

private func letters(_ count: Int, _ rng: inout SplitMix64) -> String {
    let alphabet = Array("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ".utf8)
    return String(decoding: (0..<count).map { _ in alphabet[Int(rng.next() % UInt64(alphabet.count))] }, as: UTF8.self)
}

/// `n` in decimal with leading zeros to `width` digits.
private func padded(_ n: Int, _ width: Int) -> String {
    let digits = String(n)
    return String(repeating: "0", count: max(0, width - digits.count)) + digits
}
