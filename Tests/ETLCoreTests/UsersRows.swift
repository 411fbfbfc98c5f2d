import DurableETL
import Users

/// The users mapping's rows for a few documents, as a batch would COPY them.
func userRows(expectedDocuments: Int = 500, maxDocumentBytes: Int = JobSettings.defaultMaxDocumentBytes) -> MappedRows {
    MappedRows(UsersMapping(), expectedDocuments: expectedDocuments, maxDocumentBytes: maxDocumentBytes)
}
