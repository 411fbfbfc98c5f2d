import Foundation
import Mongo
import TestSupport
import DurableETL
import TestSupport
import Users
import UsersFixtures
import UsersFixtures

/// The users pipeline's view of a sandbox: its collection, its generator and its 15 tables.
extension Sandbox {
    var users: MongoCollection { mongo.collection(database: mongoDatabase, name: "users") }

    func seed(users n: Int, seed: UInt64 = 42, firstId: Int64 = 1) throws {
        let generator = UserGenerator(seed: seed)
        var next = firstId
        while next < firstId + Int64(n) {
            let upper = min(next + 500, firstId + Int64(n))
            try users.insertMany((next..<upper).map { generator.document(id: $0) })
            next = upper
        }
    }

    func checksums(schema: String = "public") throws -> [String: String] {
        try checksums(tables: UsersMapping.tableNames, schema: schema)
    }

    func counts(schema: String = "public") throws -> [String: Int] {
        try counts(tables: UsersMapping.tableNames, schema: schema)
    }

    func duplicateKeys(schema: String = "public") throws -> Int {
        try duplicateKeys(tables: UsersMapping.tableNames, schema: schema)
    }
}
