-- Schema 3: teams, each with a team directory id chosen at random by the
-- relay and handed to devices at enrolment. (Derived from the team name it
-- would be guessable, and another team's device could claim it first.)
CREATE TABLE teams (
    name         TEXT PRIMARY KEY NOT NULL,
    directory_id TEXT NOT NULL UNIQUE,
    created_at   TEXT NOT NULL
) STRICT;
