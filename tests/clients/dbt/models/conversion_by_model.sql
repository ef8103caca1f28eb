-- Conversion by model, from the tenant's telemetry joined with its outcomes.
select
    e.model_name,
    count(*) as inference_count,
    avg(cast(o.converted as integer)) as conversion_rate
from {{ source('raindrop', 'raw_events') }} as e
join {{ source('outcomes', 'user_outcomes') }} as o
    on e.session_id = o.session_id
where e.event_type = 'inference'
group by 1
