-- Schema 4: which device made a document's latest change. "What changed
-- since my cursor" leaves out documents whose latest change is the asking
-- device's own: it uploaded them in a sync that ended with both sides equal,
-- and re-opening all of them on the next sync cost a device that had just
-- uploaded 2,000 documents 2,000 needless exchanges (benchmark workload 3).
ALTER TABLE documents ADD COLUMN last_device TEXT;
