mod dashboards;
mod rules;
