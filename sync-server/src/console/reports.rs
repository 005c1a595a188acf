//! Family-day reports and the outcomes report for funders and
//! commissioners, computed from the projections (`projector.rs`), never by
//! loading documents per request. The outcomes report applies disclosure
//! control (`sdc.rs`) to every table, on the page and in its CSV alike.

use std::collections::BTreeMap;

use axum::extract::{Query, State};
use axum::http::StatusCode;
use chrono::{Datelike, NaiveDate, Utc};
use linkbook_core::{DocumentId, NoteCategory};
use maud::{Markup, html};
use serde::Deserialize;

use super::projector::{DayFacts, FamilyFacts};
use super::sdc::{self, Shown};
use super::{ConsoleError, ConsoleResult, Page, Staff, csv, svg};
use crate::AppState;
use crate::storage::{AuditAction, ProjectionKind, Team};

/// The age bands children are counted in (inclusive years).
pub const AGE_BANDS: [(&str, u32, u32); 4] = [
    ("0–4", 0, 4),
    ("5–10", 5, 10),
    ("11–15", 11, 15),
    ("16–17", 16, 17),
];
/// The row of children whose date of birth is not recorded.
pub const AGE_UNKNOWN: &str = "Age not recorded";
/// The column of referrals without an outcome yet.
pub const NO_OUTCOME: &str = "Awaiting outcome";

async fn families_of(
    state: &AppState,
    team: &Team,
) -> ConsoleResult<Vec<(DocumentId, FamilyFacts)>> {
    let rows = state
        .storage
        .projections(team, ProjectionKind::Family)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, json)| Some((id, serde_json::from_str(&json).ok()?)))
        .collect())
}

async fn days_of(state: &AppState, team: &Team) -> ConsoleResult<Vec<(DocumentId, DayFacts)>> {
    let rows = state
        .storage
        .projections(team, ProjectionKind::FamilyDay)
        .await?;
    Ok(rows
        .into_iter()
        .filter_map(|(id, json)| Some((id, serde_json::from_str(&json).ok()?)))
        .collect())
}

/// A count table's rows, columns and cells before disclosure control.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counts {
    pub rows: Vec<String>,
    pub cols: Vec<String>,
    pub cells: Vec<Vec<u64>>,
}

/// The outcomes report's true counts for a team over a period.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outcomes {
    pub from: NaiveDate,
    pub to: NaiveDate,
    /// Families open at any time in the period.
    pub supported: u64,
    /// Families opened in the period.
    pub new: u64,
    /// Closures in the period by reason (one column).
    pub closures: Counts,
    /// Children of supported families by age band at the period's end (or
    /// the family's closure, if earlier).
    pub children: Counts,
    /// Case notes written in the period by category.
    pub notes: Counts,
    /// Referrals dated in the period: agency × outcome.
    pub referrals: Counts,
    /// Family days in the period by prison: families, adults, children.
    pub attendance: Counts,
}

fn age_on(born: NaiveDate, day: NaiveDate) -> Option<u32> {
    if born > day {
        return None;
    }
    let mut years = day.year() - born.year();
    if (day.month(), day.day()) < (born.month(), born.day()) {
        years -= 1;
    }
    u32::try_from(years).ok()
}

/// Groups free text (a closure reason, an agency) without regard to case
/// or spacing, shown as first written.
fn group_key(text: &str) -> String {
    text.split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
        .to_lowercase()
}

struct Grouper {
    labels: BTreeMap<String, String>,
}

impl Grouper {
    fn new() -> Self {
        Grouper {
            labels: BTreeMap::new(),
        }
    }

    fn key(&mut self, text: &str) -> String {
        let key = group_key(text);
        let key = if key.is_empty() {
            "(none given)".to_string()
        } else {
            key
        };
        self.labels
            .entry(key.clone())
            .or_insert_with(|| text.split_whitespace().collect::<Vec<_>>().join(" "));
        key
    }

    fn label(&self, key: &str) -> String {
        self.labels
            .get(key)
            .cloned()
            .unwrap_or_else(|| key.to_string())
    }
}

/// Counts the outcomes of `families` and `days` for `from..=to`.
pub fn outcomes(
    families: &[FamilyFacts],
    days: &[DayFacts],
    from: NaiveDate,
    to: NaiveDate,
) -> Outcomes {
    let within = |d: NaiveDate| d >= from && d <= to;
    let supported: Vec<&FamilyFacts> = families
        .iter()
        .filter(|f| f.opened <= to && f.closed.is_none_or(|c| c >= from))
        .collect();
    let new = families.iter().filter(|f| within(f.opened)).count() as u64;

    let mut reasons = Grouper::new();
    let mut closures: BTreeMap<String, u64> = BTreeMap::new();
    for f in families {
        if let Some(closed) = f.closed.filter(|c| within(*c)) {
            let _ = closed;
            let key = reasons.key(f.closure_reason.as_deref().unwrap_or(""));
            *closures.entry(key).or_default() += 1;
        }
    }

    let mut bands = [0u64; AGE_BANDS.len()];
    let mut unknown = 0u64;
    for f in &supported {
        let on = f.closed.map_or(to, |c| c.min(to));
        for born in &f.children {
            match born {
                None => unknown += 1,
                Some(born) => {
                    if let Some(age) = age_on(*born, on)
                        && let Some(i) = AGE_BANDS
                            .iter()
                            .position(|(_, lo, hi)| (*lo..=*hi).contains(&age))
                    {
                        bands[i] += 1;
                    }
                }
            }
        }
    }

    let mut notes: BTreeMap<&str, u64> = BTreeMap::new();
    for f in families {
        for (category, day, n) in &f.notes {
            if within(*day) {
                *notes.entry(category.as_str()).or_default() += u64::from(*n);
            }
        }
    }

    let mut agencies = Grouper::new();
    let mut outcome_names = Grouper::new();
    let mut referrals: BTreeMap<(String, String), u64> = BTreeMap::new();
    for f in families {
        for r in f.referrals.iter().filter(|r| within(r.date)) {
            let agency = agencies.key(&r.agency);
            let outcome = outcome_names.key(r.outcome.as_deref().unwrap_or(NO_OUTCOME));
            *referrals.entry((agency, outcome)).or_default() += 1;
        }
    }
    let agency_keys: Vec<String> = agencies.labels.keys().cloned().collect();
    let outcome_keys: Vec<String> = outcome_names.labels.keys().cloned().collect();

    let mut prisons = Grouper::new();
    let mut attendance: BTreeMap<String, [u64; 3]> = BTreeMap::new();
    for d in days.iter().filter(|d| within(d.date)) {
        let key = prisons.key(&d.prison);
        let row = attendance.entry(key).or_default();
        row[0] += d.attended.len() as u64;
        row[1] += d.attended.iter().map(|a| u64::from(a.adults)).sum::<u64>();
        row[2] += d
            .attended
            .iter()
            .map(|a| u64::from(a.children))
            .sum::<u64>();
    }

    Outcomes {
        from,
        to,
        supported: supported.len() as u64,
        new,
        closures: Counts {
            rows: closures.keys().map(|k| reasons.label(k)).collect(),
            cols: vec!["Closures".into()],
            cells: closures.values().map(|n| vec![*n]).collect(),
        },
        children: Counts {
            rows: AGE_BANDS
                .iter()
                .map(|(l, _, _)| l.to_string())
                .chain([AGE_UNKNOWN.to_string()])
                .collect(),
            cols: vec!["Children".into()],
            cells: bands.iter().chain([&unknown]).map(|n| vec![*n]).collect(),
        },
        notes: Counts {
            rows: NoteCategory::ALL
                .iter()
                .map(|c| category_label(*c).to_string())
                .collect(),
            cols: vec!["Case notes".into()],
            cells: NoteCategory::ALL
                .iter()
                .map(|c| vec![notes.get(c.as_str()).copied().unwrap_or(0)])
                .collect(),
        },
        referrals: Counts {
            rows: agency_keys.iter().map(|k| agencies.label(k)).collect(),
            cols: outcome_keys
                .iter()
                .map(|k| outcome_names.label(k))
                .collect(),
            cells: agency_keys
                .iter()
                .map(|a| {
                    outcome_keys
                        .iter()
                        .map(|o| referrals.get(&(a.clone(), o.clone())).copied().unwrap_or(0))
                        .collect()
                })
                .collect(),
        },
        attendance: Counts {
            rows: attendance.keys().map(|k| prisons.label(k)).collect(),
            cols: vec!["Families".into(), "Adults".into(), "Children".into()],
            cells: attendance.values().map(|r| r.to_vec()).collect(),
        },
    }
}

/// A note category in words.
pub fn category_label(c: NoteCategory) -> &'static str {
    match c {
        NoteCategory::Visit => "Visit",
        NoteCategory::PhoneCall => "Phone call",
        NoteCategory::Helpline => "Helpline",
        NoteCategory::Court => "Court",
        NoteCategory::School => "School",
        NoteCategory::Other => "Other",
    }
}

/// A table after disclosure control, as text cells.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Published {
    pub title: String,
    pub rows: Vec<String>,
    pub cols: Vec<String>,
    pub cells: Vec<Vec<String>>,
    /// Row totals, when a row total means something (one column: none).
    pub row_totals: Option<Vec<String>>,
    pub col_totals: Vec<String>,
    pub total: String,
    /// The table could not be protected at this threshold: withheld.
    pub withheld: bool,
}

/// `counts` under disclosure control at `threshold`. `row_totals`: whether
/// the rows' totals are published (they are added up across columns of
/// the same unit only).
pub fn publish(title: &str, counts: &Counts, threshold: u64, row_totals: bool) -> Published {
    let r = |s: &Shown| s.render(threshold);
    if counts.rows.is_empty() {
        return Published {
            title: title.to_string(),
            rows: Vec::new(),
            cols: counts.cols.clone(),
            cells: Vec::new(),
            row_totals: row_totals.then(Vec::new),
            col_totals: vec!["0".to_string(); counts.cols.len()],
            total: "0".to_string(),
            withheld: false,
        };
    }
    if counts.cols.len() == 1 {
        let values: Vec<u64> = counts.cells.iter().map(|row| row[0]).collect();
        let p = sdc::protect_list(&values, threshold);
        return Published {
            title: title.to_string(),
            rows: counts.rows.clone(),
            cols: counts.cols.clone(),
            cells: p.items.iter().map(|s| vec![r(s)]).collect(),
            row_totals: None,
            col_totals: vec![r(&p.total)],
            total: r(&p.total),
            withheld: !p.unprotectable.is_empty(),
        };
    }
    let p = sdc::protect_table(&counts.cells, threshold);
    Published {
        title: title.to_string(),
        rows: counts.rows.clone(),
        cols: counts.cols.clone(),
        cells: p
            .cells
            .iter()
            .map(|row| row.iter().map(r).collect())
            .collect(),
        row_totals: row_totals.then(|| p.row_totals.iter().map(r).collect()),
        col_totals: p.col_totals.iter().map(r).collect(),
        total: r(&p.total),
        withheld: !p.unprotectable.is_empty(),
    }
}

/// Every table of the report, published.
pub fn published(o: &Outcomes, threshold: u64) -> (String, String, Vec<Published>) {
    let supported = sdc::protect_count(o.supported, threshold).render(threshold);
    let new = sdc::protect_count(o.new, threshold).render(threshold);
    let tables = vec![
        publish("Closures by reason", &o.closures, threshold, false),
        publish("Children supported by age", &o.children, threshold, false),
        publish("Case notes by category", &o.notes, threshold, false),
        publish(
            "Referrals by agency and outcome",
            &o.referrals,
            threshold,
            true,
        ),
        publish(
            "Family-day attendance by prison",
            &o.attendance,
            threshold,
            false,
        ),
    ];
    (supported, new, tables)
}

#[derive(Debug, Deserialize, Default)]
pub struct OutcomesQuery {
    team: Option<String>,
    from: Option<String>,
    to: Option<String>,
    threshold: Option<String>,
}

struct Period {
    team: Option<Team>,
    from: NaiveDate,
    to: NaiveDate,
    threshold: u64,
}

fn period(q: &OutcomesQuery, minimum: u64) -> ConsoleResult<Period> {
    let today = Utc::now().date_naive();
    let date = |v: &Option<String>, default: NaiveDate, field: &str| -> ConsoleResult<NaiveDate> {
        match v.as_deref().map(str::trim).filter(|v| !v.is_empty()) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|_| {
                ConsoleError::BadRequest(format!("{field} must be a date (YYYY-MM-DD)."))
            }),
        }
    };
    let year_start = NaiveDate::from_ymd_opt(today.year(), 1, 1).unwrap_or(today);
    let from = date(&q.from, year_start, "From")?;
    let to = date(&q.to, today, "To")?;
    if from > to {
        return Err(ConsoleError::BadRequest(
            "From must not be after To.".into(),
        ));
    }
    let threshold = match q
        .threshold
        .as_deref()
        .map(str::trim)
        .filter(|v| !v.is_empty())
    {
        None => minimum,
        Some(v) => v.parse::<u64>().map_err(|_| {
            ConsoleError::BadRequest("The threshold must be a whole number.".into())
        })?,
    };
    if threshold < minimum || threshold > 1000 {
        return Err(ConsoleError::BadRequest(format!(
            "The threshold must be {minimum} (the relay's setting) to 1000."
        )));
    }
    let team = q
        .team
        .as_deref()
        .map(str::trim)
        .filter(|t| !t.is_empty())
        .map(Team::from);
    Ok(Period {
        team,
        from,
        to,
        threshold,
    })
}

fn table(p: &Published, threshold: u64) -> Markup {
    let id = p
        .title
        .to_lowercase()
        .replace(|c: char| !c.is_ascii_alphanumeric(), "-");
    html! {
        section.report-table aria-labelledby={ "h-" (id) } {
            h2 id={ "h-" (id) } { (p.title) }
            @if p.withheld {
                p role="status" { "Withheld: at a threshold of " (threshold) " these counts are too small to publish without revealing some of them." }
            } @else if p.rows.is_empty() {
                p { "None in this period." }
            } @else {
                div.scroll {
                    table id=(id) {
                        thead { tr {
                            th scope="col" { span.visually-hidden { "Row" } }
                            @for c in &p.cols { th scope="col" { (c) } }
                            @if p.row_totals.is_some() { th scope="col" { "Total" } }
                        } }
                        tbody {
                            @for (i, row) in p.rows.iter().enumerate() {
                                tr {
                                    th scope="row" { (row) }
                                    @for cell in &p.cells[i] { td { (cell) } }
                                    @if let Some(totals) = &p.row_totals { td { (totals[i]) } }
                                }
                            }
                        }
                        tfoot { tr {
                            th scope="row" { "Total" }
                            @for t in &p.col_totals { td { (t) } }
                            @if p.row_totals.is_some() { td { (p.total) } }
                        } }
                    }
                }
            }
        }
    }
}

/// The published outcomes of `team` for period `p`: what the page and
/// its CSV both show.
async fn report(
    state: &AppState,
    team: &Team,
    p: &Period,
) -> ConsoleResult<(String, String, Vec<Published>)> {
    let families: Vec<FamilyFacts> = families_of(state, team)
        .await?
        .into_iter()
        .map(|(_, f)| f)
        .collect();
    let days: Vec<DayFacts> = days_of(state, team)
        .await?
        .into_iter()
        .map(|(_, d)| d)
        .collect();
    Ok(published(
        &outcomes(&families, &days, p.from, p.to),
        p.threshold,
    ))
}

async fn report_teams(state: &AppState) -> ConsoleResult<Vec<Team>> {
    Ok(state.storage.projected_teams().await?)
}

pub async fn outcomes_page(
    State(state): State<AppState>,
    staff: Staff,
    Query(q): Query<OutcomesQuery>,
) -> ConsoleResult {
    staff.may_open("/console/outcomes")?;
    let minimum = state.console.config.report_threshold.max(1);
    let p = period(&q, minimum)?;
    let teams = report_teams(&state).await?;
    let team = p.team.clone().or_else(|| teams.first().cloned());
    let report = match &team {
        Some(team) => Some(report(&state, team, &p).await?),
        None => None,
    };
    let csv_link = format!(
        "/console/outcomes.csv?{}",
        url::form_urlencoded::Serializer::new(String::new())
            .append_pair("team", team.as_deref().unwrap_or(""))
            .append_pair("from", &p.from.to_string())
            .append_pair("to", &p.to.to_string())
            .append_pair("threshold", &p.threshold.to_string())
            .finish()
    );
    Ok(Page::respond(
        StatusCode::OK,
        Page::render(
            "Outcomes report",
            Some(&staff),
            "/console/outcomes",
            html! {
                form.filters.no-print method="get" action="/console/outcomes" {
                    div {
                        label for="o-team" { "Team" }
                        select #o-team name="team" {
                            @for t in &teams {
                                option value=(t.as_str()) selected[team.as_ref() == Some(t)] { (t.as_str()) }
                            }
                        }
                    }
                    div { label for="o-from" { "From" } input #o-from name="from" type="date" value=(p.from.to_string()); }
                    div { label for="o-to" { "To" } input #o-to name="to" type="date" value=(p.to.to_string()); }
                    div { label for="o-threshold" { "Suppress counts below" } input #o-threshold name="threshold" type="number" min=(minimum) max="1000" value=(p.threshold); }
                    button type="submit" { "Show report" }
                }
                @match (&team, &report) {
                    (Some(team), Some((supported, new, tables))) => {
                        p.lead {
                            "Team " strong { (team.as_str()) } ", " (p.from.format("%-d %B %Y")) " to " (p.to.format("%-d %B %Y")) ". "
                            "Counts from 1 to " (p.threshold - 1) " are shown as “<" (p.threshold) "”, and some further counts as “" (sdc::SUPPRESSED_MARK) "”, so that no small count can be worked out from the totals."
                        }
                        dl.figures {
                            dt { "Families supported" } dd #supported { (supported) }
                            dt { "New families" } dd #new-families { (new) }
                        }
                        @for t in tables { (table(t, p.threshold)) }
                        p.no-print { a href=(csv_link) download { "Download CSV" } " (the same suppression)" }
                    }
                    _ => { p { "No reports yet: they appear once devices have synced case files." } }
                }
            },
        ),
    ))
}

pub async fn outcomes_csv(
    State(state): State<AppState>,
    staff: Staff,
    Query(q): Query<OutcomesQuery>,
) -> ConsoleResult {
    staff.may_open("/console/outcomes")?;
    let minimum = state.console.config.report_threshold.max(1);
    let p = period(&q, minimum)?;
    let team = p
        .team
        .clone()
        .ok_or_else(|| ConsoleError::BadRequest("Choose a team.".into()))?;
    let (supported, new, tables) = report(&state, &team, &p).await?;
    let now = Utc::now();
    let mut record = staff.audit(AuditAction::ReportExported, now);
    record.team = Some(team.to_string());
    state.storage.append_audit(&[record]).await?;
    let mut rows = vec![
        ["table", "row", "column", "count"]
            .map(String::from)
            .to_vec(),
        vec![
            "Families supported".into(),
            String::new(),
            String::new(),
            supported,
        ],
        vec!["New families".into(), String::new(), String::new(), new],
    ];
    for t in &tables {
        if t.withheld {
            rows.push(vec![
                t.title.clone(),
                String::new(),
                String::new(),
                "withheld".into(),
            ]);
            continue;
        }
        for (i, row) in t.rows.iter().enumerate() {
            for (j, col) in t.cols.iter().enumerate() {
                rows.push(vec![
                    t.title.clone(),
                    row.clone(),
                    col.clone(),
                    t.cells[i][j].clone(),
                ]);
            }
            if let Some(totals) = &t.row_totals {
                rows.push(vec![
                    t.title.clone(),
                    row.clone(),
                    "Total".into(),
                    totals[i].clone(),
                ]);
            }
        }
        for (j, col) in t.cols.iter().enumerate() {
            rows.push(vec![
                t.title.clone(),
                "Total".into(),
                col.clone(),
                t.col_totals[j].clone(),
            ]);
        }
        if t.row_totals.is_some() {
            rows.push(vec![
                t.title.clone(),
                "Total".into(),
                "Total".into(),
                t.total.clone(),
            ]);
        }
    }
    csv::download(
        &format!("outcomes-{}-{}-{}.csv", team.as_str(), p.from, p.to),
        &rows,
    )
}

#[derive(Debug, Deserialize, Default)]
pub struct DaysQuery {
    team: Option<String>,
    prison: Option<String>,
}

pub async fn family_days(
    State(state): State<AppState>,
    staff: Staff,
    Query(q): Query<DaysQuery>,
) -> ConsoleResult {
    staff.may_open("/console/family-days")?;
    let teams = report_teams(&state).await?;
    let only_team = q.team.as_deref().map(str::trim).filter(|t| !t.is_empty());
    let prison = q.prison.as_deref().map(group_key).filter(|p| !p.is_empty());
    let mut days = Vec::new();
    for team in teams
        .iter()
        .filter(|t| only_team.is_none_or(|o| t.as_str() == o))
    {
        for (id, d) in days_of(&state, team).await? {
            if prison
                .as_ref()
                .is_none_or(|p| group_key(&d.prison).contains(p.as_str()))
            {
                days.push((team.clone(), id, d));
            }
        }
    }
    days.sort_by(|a, b| {
        b.2.date
            .cmp(&a.2.date)
            .then_with(|| a.2.prison.cmp(&b.2.prison))
    });
    Ok(Page::respond(
        StatusCode::OK,
        Page::render(
            "Family days",
            Some(&staff),
            "/console/family-days",
            html! {
                form.filters method="get" action="/console/family-days" {
                    div {
                        label for="d-team" { "Team" }
                        select #d-team name="team" {
                            option value="" { "all" }
                            @for t in &teams { option value=(t.as_str()) selected[only_team == Some(t.as_str())] { (t.as_str()) } }
                        }
                    }
                    div { label for="d-prison" { "Prison" } input #d-prison name="prison" type="text" value=(q.prison.clone().unwrap_or_default()); }
                    button type="submit" { "Filter" }
                }
                @if days.is_empty() {
                    p { "No family days yet." }
                } @else {
                    div.scroll {
                        table #family-days {
                            caption.visually-hidden { "Family days, latest first" }
                            thead { tr {
                                th scope="col" { "Date" }
                                th scope="col" { "Prison" }
                                th scope="col" { "Team" }
                                th scope="col" { "Families booked" }
                                th scope="col" { "Families attended" }
                                th scope="col" { "Adults" }
                                th scope="col" { "Children" }
                            } }
                            tbody {
                                @for (team, id, d) in &days {
                                    tr {
                                        td { a href={ "/console/family-days/day?team=" (url_part(team.as_str())) "&id=" (id.to_string()) } { (d.date.to_string()) } }
                                        td { (d.prison) }
                                        td { (team.as_str()) }
                                        td { (d.booked.len()) }
                                        td { (d.attended.len()) }
                                        td { (d.attended.iter().map(|a| a.adults).sum::<u32>()) }
                                        td { (d.attended.iter().map(|a| a.children).sum::<u32>()) }
                                    }
                                }
                            }
                        }
                    }
                }
            },
        ),
    ))
}

fn url_part(s: &str) -> String {
    url::form_urlencoded::byte_serialize(s.as_bytes()).collect()
}

#[derive(Debug, Deserialize)]
pub struct DayQuery {
    team: Option<String>,
    id: Option<String>,
}

async fn the_day(state: &AppState, q: &DayQuery) -> ConsoleResult<(Team, DocumentId, DayFacts)> {
    let team = Team::from(q.team.as_deref().unwrap_or_default().trim());
    let id = crate::admin::parse_family_id(q.id.as_deref().unwrap_or_default().trim())
        .map_err(|_| ConsoleError::BadRequest("That is not a family day id.".into()))?;
    let day = days_of(state, &team)
        .await?
        .into_iter()
        .find(|(d, _)| *d == id)
        .ok_or_else(|| ConsoleError::NotFound("There is no such family day.".into()))?;
    Ok((team, id, day.1))
}

/// Every device's name by its id (check-ins name the tablet).
async fn device_names(state: &AppState) -> ConsoleResult<BTreeMap<String, String>> {
    Ok(state
        .storage
        .devices()
        .await?
        .into_iter()
        .map(|d| (d.id.to_string(), d.device_name))
        .collect())
}

/// Arrivals per half hour, from the first to the last.
pub fn arrivals_by_half_hour(day: &DayFacts) -> Vec<(String, u64)> {
    use chrono::Timelike;
    let slot = |t: &chrono::DateTime<Utc>| t.hour() * 2 + t.minute() / 30;
    let slots: Vec<u32> = day.attended.iter().map(|a| slot(&a.arrived_at)).collect();
    let (Some(first), Some(last)) = (slots.iter().min(), slots.iter().max()) else {
        return Vec::new();
    };
    (*first..=*last)
        .map(|s| {
            (
                format!("{:02}:{:02}", s / 2, (s % 2) * 30),
                slots.iter().filter(|x| **x == s).count() as u64,
            )
        })
        .collect()
}

pub async fn family_day(
    State(state): State<AppState>,
    staff: Staff,
    Query(q): Query<DayQuery>,
) -> ConsoleResult {
    staff.may_open("/console/family-days")?;
    let (team, id, day) = the_day(&state, &q).await?;
    let devices = device_names(&state).await?;
    let name_of = |id: &str| devices.get(id).cloned().unwrap_or_else(|| id.to_string());
    let chart = arrivals_by_half_hour(&day);
    let mut attended = day.attended.clone();
    attended.sort_by_key(|a| a.arrived_at);
    let adults: u32 = day.attended.iter().map(|a| a.adults).sum();
    let children: u32 = day.attended.iter().map(|a| a.children).sum();
    Ok(Page::respond(
        StatusCode::OK,
        Page::render(
            &format!(
                "Family day at {}, {}",
                day.prison,
                day.date.format("%-d %B %Y")
            ),
            Some(&staff),
            "/console/family-days",
            html! {
                p { "Team " (team.as_str()) ". " a href={ "/console/family-days/day.csv?team=" (url_part(team.as_str())) "&id=" (id.to_string()) } download { "Download CSV" } }
                dl.figures {
                    dt { "Families booked" } dd #booked { (day.booked.len()) }
                    dt { "Families attended" } dd #attended { (day.attended.len()) }
                    dt { "Adults" } dd #adults { (adults) }
                    dt { "Children" } dd #children { (children) }
                    @if let Some(c) = day.capacity { dt { "Capacity" } dd { (c) } }
                }
                @if !chart.is_empty() {
                    h2 { "Arrivals by half hour" }
                    figure.chart-figure {
                        (svg::bar_chart("Families arriving in each half hour", &chart))
                        figcaption { "Families arriving in each half hour (UTC)." }
                    }
                }
                h2 { "Check-ins" }
                div.scroll {
                    table #check-ins {
                        caption.visually-hidden { "Families checked in, by arrival" }
                        thead { tr {
                            th scope="col" { "Arrived (UTC)" }
                            th scope="col" { "Family" }
                            th scope="col" { "Adults" }
                            th scope="col" { "Children" }
                            th scope="col" { "Checked in by" }
                        } }
                        tbody {
                            @for a in &attended {
                                tr {
                                    td { (a.arrived_at.format("%H:%M")) }
                                    td { code.small { (a.family) } }
                                    td { (a.adults) }
                                    td { (a.children) }
                                    td { (a.by.iter().map(|d| name_of(d)).collect::<Vec<_>>().join(", ")) }
                                }
                            }
                        }
                    }
                }
            },
        ),
    ))
}

pub async fn family_day_csv(
    State(state): State<AppState>,
    staff: Staff,
    Query(q): Query<DayQuery>,
) -> ConsoleResult {
    staff.may_open("/console/family-days")?;
    let (team, id, day) = the_day(&state, &q).await?;
    let devices = device_names(&state).await?;
    let now = Utc::now();
    let mut record = staff.audit(AuditAction::ReportExported, now);
    record.team = Some(team.to_string());
    record.document_id = Some(id.to_string());
    state.storage.append_audit(&[record]).await?;
    let mut rows = vec![
        [
            "prison",
            "date",
            "family",
            "booked_adults",
            "booked_children",
            "attended",
            "adults",
            "children",
            "arrived_at",
            "checked_in_by",
        ]
        .map(String::from)
        .to_vec(),
    ];
    let mut families: BTreeMap<
        &str,
        (
            Option<&super::projector::HeadCount>,
            Option<&super::projector::Arrival>,
        ),
    > = BTreeMap::new();
    for b in &day.booked {
        families.entry(b.family.as_str()).or_default().0 = Some(b);
    }
    for a in &day.attended {
        families.entry(a.family.as_str()).or_default().1 = Some(a);
    }
    for (family, (booked, arrived)) in families {
        rows.push(vec![
            day.prison.clone(),
            day.date.to_string(),
            family.to_string(),
            booked.map(|b| b.adults.to_string()).unwrap_or_default(),
            booked.map(|b| b.children.to_string()).unwrap_or_default(),
            if arrived.is_some() { "yes" } else { "no" }.to_string(),
            arrived.map(|a| a.adults.to_string()).unwrap_or_default(),
            arrived.map(|a| a.children.to_string()).unwrap_or_default(),
            arrived
                .map(|a| a.arrived_at.to_rfc3339())
                .unwrap_or_default(),
            arrived
                .map(|a| {
                    a.by.iter()
                        .map(|d| devices.get(d).cloned().unwrap_or_else(|| d.clone()))
                        .collect::<Vec<_>>()
                        .join("; ")
                })
                .unwrap_or_default(),
        ]);
    }
    csv::download(
        &format!("family-day-{}-{}.csv", day.prison, day.date),
        &rows,
    )
}

#[cfg(test)]
mod tests {
    use super::super::projector::ReferralFact;
    use super::*;

    fn d(s: &str) -> NaiveDate {
        s.parse().expect("date")
    }

    fn family(opened: &str, closed: Option<(&str, &str)>) -> FamilyFacts {
        FamilyFacts {
            opened: d(opened),
            closed: closed.map(|(c, _)| d(c)),
            closure_reason: closed.map(|(_, r)| r.to_string()),
            children: vec![],
            notes: vec![],
            referrals: vec![],
        }
    }

    #[test]
    fn families_supported_are_those_open_in_the_period() {
        let families = vec![
            family("2025-06-01", None),
            family("2026-02-01", None),
            family("2025-01-01", Some(("2025-12-31", "moved"))),
            family("2025-01-01", Some(("2026-01-10", "Moved "))),
            family("2026-07-01", None),
        ];
        let o = outcomes(&families, &[], d("2026-01-01"), d("2026-06-30"));
        assert_eq!(o.supported, 3);
        assert_eq!(o.new, 1);
        assert_eq!(o.closures.rows, vec!["Moved".to_string()]);
        assert_eq!(o.closures.cells, vec![vec![1]]);
    }

    #[test]
    fn children_are_banded_by_age_at_the_end_of_the_period() {
        let mut f = family("2020-01-01", None);
        f.children = vec![
            Some(d("2022-06-30")), // 4 on 2026-06-30
            Some(d("2021-06-30")), // 5
            Some(d("2010-07-01")), // 15
            Some(d("2008-06-30")), // 18: not a child any more
            None,
        ];
        let o = outcomes(&[f], &[], d("2026-01-01"), d("2026-06-30"));
        assert_eq!(
            o.children.cells,
            vec![vec![1], vec![1], vec![1], vec![0], vec![1]]
        );
    }

    #[test]
    fn referrals_group_agencies_and_outcomes_without_regard_to_case() {
        let mut f = family("2020-01-01", None);
        f.referrals = vec![
            ReferralFact {
                agency: "Citizens Advice".into(),
                outcome: Some("accepted".into()),
                date: d("2026-03-01"),
            },
            ReferralFact {
                agency: "citizens  advice".into(),
                outcome: None,
                date: d("2026-03-02"),
            },
            ReferralFact {
                agency: "School".into(),
                outcome: Some("Accepted".into()),
                date: d("2025-03-02"),
            },
        ];
        let o = outcomes(&[f], &[], d("2026-01-01"), d("2026-06-30"));
        assert_eq!(o.referrals.rows, vec!["Citizens Advice".to_string()]);
        assert_eq!(
            o.referrals.cols,
            vec!["accepted".to_string(), NO_OUTCOME.to_string()]
        );
        assert_eq!(o.referrals.cells, vec![vec![1, 1]]);
    }

    #[test]
    fn a_published_list_hides_small_counts_and_one_more() {
        let counts = Counts {
            rows: vec!["a".into(), "b".into(), "c".into(), "d".into()],
            cols: vec!["n".into()],
            cells: vec![vec![3], vec![10], vec![12], vec![7]],
        };
        let p = publish("t", &counts, 5, false);
        assert_eq!(p.cells[0], vec!["<5".to_string()]);
        assert_eq!(p.total, "32");
        let hidden = p
            .cells
            .iter()
            .filter(|c| c[0] == sdc::SUPPRESSED_MARK)
            .count();
        assert_eq!(hidden, 1, "{p:?}");
    }
}
