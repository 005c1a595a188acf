-- Schema 12: conditional compaction (docs/adr/0009). A document's snapshot
-- covers every change of it with `seq` up to `compacted_through`; a
-- compaction deletes only the changes its snapshot covers, and is refused
-- when the stored snapshot already covers more, so changes appended
-- meanwhile (by this relay or another process) always survive.
ALTER TABLE documents ADD COLUMN compacted_through INTEGER NOT NULL DEFAULT 0;
UPDATE documents SET compacted_through = coalesce(
        (SELECT min(c.seq) - 1 FROM changes c WHERE c.team = documents.team AND c.doc_id = documents.id),
        seq)
    WHERE snapshot IS NOT NULL;
