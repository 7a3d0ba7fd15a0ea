"""The short health summary the main job and the build_cubes DAG end with: what the cubes say about
the fleet, and which alerts fired."""
from __future__ import annotations

import io

from warehouse.query import connect, write_rows

SECTIONS = {
    "Runs trained on this machine, and their latest evaluation": """
        with latest_eval as (
            select train_run_id, max(checkpoint_step) as checkpoint_step,
                   arg_max(value, checkpoint_step) filter (where metric = 'accuracy') as accuracy
            from eval_results
            where suite = 'quality'
            group by train_run_id
        )
        select r.model, r.precision, r.status, r.steps, round(r.final_loss, 4) as final_loss,
               e.checkpoint_step as evaluated_step, round(e.accuracy, 4) as accuracy
        from runs as r
        left join latest_eval as e on e.train_run_id = r.run_id
        where r.kind = 'train' and r.source = 'trainer'
        order by r.model, r.precision""",
    "Fleet by model and hardware (all dates, all precisions)": """
        select model, hardware, n_runs as runs, n_steps as steps, round(tokens_per_s) as tokens_per_s,
               round(step_time_p95_ms, 1) as step_time_p95_ms, n_loss_nonfinite as nan_inf_steps
        from train_health
        where agg_level = 'model,hardware' and date is null
        order by steps desc limit 10""",
    "Alerts by rule and severity": """
        select rule, severity, count(*) as alerts, count(distinct model) as models
        from alerts
        group by rule, severity
        order by case severity when 'critical' then 0 when 'warning' then 1 else 2 end, alerts desc, rule""",
    "Latest critical alerts": """
        select rule, model, hardware, message, action
        from alerts where severity = 'critical' order by end_at desc nulls last, alert_id limit 5""",
}


def health_summary(lake_root: str | None = None, serving_path: str | None = None) -> str:
    con = connect(lake_root, serving_path)
    out = io.StringIO()
    for title, sql in SECTIONS.items():
        cur = con.execute(sql)
        out.write(f"## {title}\n")
        write_rows([d[0] for d in cur.description], cur.fetchall(), "table", out)
        out.write("\n")
    return out.getvalue()
