//! Scopes (`resource:action`) and roles, which are presets of scopes (auth.md §5).
//!
//! A key stores its expanded scope list, never a role name, so editing a role never widens old
//! keys. Unknown scope strings are rejected.

/// Every scope the daemon knows, in a stable order.
pub const ALL: &[&str] = &[
    "plugins:read",
    "plugins:control",
    "plugins:write",
    "plugins:call",
    "config:read",
    "config:write",
    "logs:read",
    "metrics:read",
    "system:read",
    "system:write",
    "settings:read",
    "settings:write",
    "keys:read",
    "keys:write",
    "sessions:read",
    "sessions:write",
    "users:read",
    "users:write",
    "audit:read",
    "llm:use",
    "rag:query",
    "rag:write",
    "jobs:read",
    "jobs:write",
    "jobs:run",
];

/// Read scopes that do not expose secrets or other people's data.
const VIEWER: &[&str] =
    &["plugins:read", "config:read", "logs:read", "metrics:read", "system:read", "settings:read", "jobs:read"];

/// What an operator adds to a viewer: control, logs, jobs, llm, rag.
const OPERATOR_EXTRA: &[&str] = &["plugins:control", "llm:use", "rag:query", "rag:write", "jobs:write", "jobs:run"];

/// The roles, weakest first.
pub const ROLES: &[&str] = &["viewer", "operator", "admin"];

/// The expanded scopes of a role, or `None` for an unknown role.
pub fn for_role(role: &str) -> Option<Vec<String>> {
    let scopes: Vec<&str> = match role {
        "viewer" => VIEWER.to_vec(),
        "operator" => VIEWER.iter().chain(OPERATOR_EXTRA).copied().collect(),
        "admin" => ALL.to_vec(),
        _ => return None,
    };
    Some(scopes.into_iter().map(str::to_owned).collect())
}

/// Checks that every scope is known; returns the first unknown one.
pub fn check_known(scopes: &[String]) -> Result<(), String> {
    match scopes.iter().find(|s| !ALL.contains(&s.as_str())) {
        Some(unknown) => Err(unknown.clone()),
        None => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roles_nest_and_admin_has_everything() {
        let viewer = for_role("viewer").unwrap();
        let operator = for_role("operator").unwrap();
        let admin = for_role("admin").unwrap();
        assert!(viewer.iter().all(|s| operator.contains(s)));
        assert!(operator.iter().all(|s| admin.contains(s)));
        assert_eq!(admin.len(), ALL.len());
        assert!(!viewer.contains(&"keys:read".to_string()), "viewers see no secrets");
        assert!(for_role("root").is_none());
    }

    #[test]
    fn unknown_scopes_are_reported() {
        assert_eq!(check_known(&["plugins:read".into(), "plugin:write".into()]), Err("plugin:write".into()));
        assert!(check_known(&["keys:write".into()]).is_ok());
    }
}
