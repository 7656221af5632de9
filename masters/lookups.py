"""``field__any=[...]``: membership in a long list as one array parameter.

``field__in`` renders one placeholder per value; for the dispatcher's
200-row batches psycopg spent more time splitting and quoting those
placeholders than PostgreSQL spent running the statement. On PostgreSQL
``any`` sends the list as a single array (``field = ANY(%s)``); elsewhere it
falls back to ``IN``.
"""

from __future__ import annotations

from django.db.models import Field, Lookup


@Field.register_lookup
class Any(Lookup):
    lookup_name = "any"
    prepare_rhs = False

    def get_prep_lookup(self):
        return [self.lhs.output_field.get_prep_value(value) for value in self.rhs]

    def as_sql(self, compiler, connection):
        lhs, lhs_params = self.process_lhs(compiler, connection)
        values = list(self.rhs)
        if not values:
            return "1 = 0", list(lhs_params)  # matches nothing, as an empty IN would
        return f"{lhs} = ANY(%s)", [*lhs_params, values]

    def as_sqlite(self, compiler, connection):
        lhs, lhs_params = self.process_lhs(compiler, connection)
        values = list(self.rhs)
        if not values:
            return "1 = 0", list(lhs_params)
        return f"{lhs} IN ({', '.join(['%s'] * len(values))})", [*lhs_params, *values]
