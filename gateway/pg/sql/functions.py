"""Data for sql.inspector: read-only built-in functions, functions denied even in write scope, settings.

Everything here is plain data so that a reviewer can audit it without reading code. Names are the
Postgres names, lowercase. Schema-qualified calls match only when the schema is pg_catalog (a function
called `upper` in another schema is somebody's code, not the built-in).
"""

from __future__ import annotations


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# --- Functions allowed in read scope ---------------------------------------------------------------
# Built-ins that neither write, nor change session state, nor reach outside the database (files,
# other servers, other backends), nor run SQL given as text. Volatile is fine (random(), now()).
# Not here, on purpose: txid_current() and pg_current_xact_id() assign a transaction id (a write to
# the clog, and what keeps a read-only standby from running them); advisory locks, large objects
# (lo_*), nextval/setval, set_config, pg_notify, backend signals, and functions that run SQL text.

_AGGREGATES = _words("""
    count sum avg min max array_agg string_agg bool_and bool_or every bit_and bit_or bit_xor
    json_agg jsonb_agg json_agg_strict jsonb_agg_strict json_object_agg jsonb_object_agg
    json_object_agg_strict jsonb_object_agg_strict json_object_agg_unique jsonb_object_agg_unique
    json_object_agg_unique_strict jsonb_object_agg_unique_strict json_arrayagg json_objectagg xmlagg
    stddev stddev_pop stddev_samp variance var_pop var_samp corr covar_pop covar_samp regr_avgx
    regr_avgy regr_count regr_intercept regr_r2 regr_slope regr_sxx regr_sxy regr_syy mode
    percentile_cont percentile_disc range_agg range_intersect_agg any_value grouping
""")

_WINDOW = _words("""
    row_number rank dense_rank percent_rank cume_dist ntile lag lead first_value last_value nth_value
""")

_CONDITIONAL = _words("coalesce nullif greatest least num_nulls num_nonnulls")

_MATH = _words("""
    abs cbrt ceil ceiling degrees div exp factorial floor gcd lcm ln log log10 min_scale mod pi power
    pow radians round scale sign sqrt trim_scale trunc width_bucket random random_normal setseed
    acos acosd asin asind atan atand atan2 atan2d cos cosd cot cotd sin sind tan tand sinh cosh tanh
    asinh acosh atanh erf erfc
""")

_STRING = _words("""
    ascii bit_length btrim char_length character_length chr concat concat_ws format initcap left
    length lower lpad ltrim md5 normalize octet_length overlay parse_ident position quote_ident
    quote_literal quote_nullable regexp_count regexp_instr regexp_like regexp_match regexp_matches
    regexp_replace regexp_split_to_array regexp_split_to_table regexp_substr repeat replace reverse
    right rpad rtrim split_part starts_with string_to_array string_to_table strpos substr substring
    to_ascii to_hex to_bin to_oct translate trim unistr upper casefold convert convert_from convert_to
    encode decode get_bit get_byte set_bit set_byte sha224 sha256 sha384 sha512 crc32 crc32c bit_count
    to_char to_date to_number to_timestamp array_to_string
""")

_DATETIME = _words("""
    age clock_timestamp current_date current_time current_timestamp date_add date_bin date_part
    date_subtract date_trunc extract isfinite justify_days justify_hours justify_interval localtime
    localtimestamp make_date make_interval make_time make_timestamp make_timestamptz now
    statement_timestamp timeofday transaction_timestamp timezone overlaps
""")

_TYPES = _words("""
    cast pg_typeof format_type to_regclass to_regtype to_regtypemod to_regproc to_regprocedure
    to_regoper to_regoperator to_regnamespace to_regrole to_regcollation pg_input_is_valid
    pg_input_error_info bool int2 int4 int8 float4 float8 numeric text varchar bpchar char date time
    timestamp timestamptz interval inet cidr macaddr macaddr8 uuid json jsonb bytea oid regclass name
    bit varbit tsvector tsquery money row array xml record trigger
""")

_JSON = _words("""
    to_json to_jsonb array_to_json row_to_json json_build_array jsonb_build_array json_build_object
    jsonb_build_object json_object jsonb_object json_array json_array_length jsonb_array_length
    json_each jsonb_each json_each_text jsonb_each_text json_extract_path jsonb_extract_path
    json_extract_path_text jsonb_extract_path_text json_object_keys jsonb_object_keys
    json_populate_record jsonb_populate_record jsonb_populate_record_valid json_populate_recordset
    jsonb_populate_recordset json_to_record jsonb_to_record json_to_recordset jsonb_to_recordset
    json_strip_nulls jsonb_strip_nulls jsonb_set jsonb_set_lax jsonb_insert jsonb_pretty json_typeof
    jsonb_typeof jsonb_path_exists jsonb_path_match jsonb_path_query jsonb_path_query_array
    jsonb_path_query_first jsonb_path_exists_tz jsonb_path_match_tz jsonb_path_query_tz
    jsonb_path_query_array_tz jsonb_path_query_first_tz json_array_elements jsonb_array_elements
    json_array_elements_text jsonb_array_elements_text json_scalar json_serialize json_exists
    json_query json_value json_table jsonb_exists jsonb_exists_any jsonb_exists_all jsonb_contains
    jsonb_contained
""")

_ARRAYS = _words("""
    array_append array_cat array_dims array_fill array_length array_lower array_ndims array_position
    array_positions array_prepend array_remove array_replace array_sample array_shuffle array_upper
    array_reverse array_sort cardinality trim_array unnest generate_series generate_subscripts
""")

_RANGES = _words("""
    isempty lower_inc upper_inc lower_inf upper_inf range_merge int4range int8range numrange tsrange
    tstzrange daterange int4multirange int8multirange nummultirange tsmultirange tstzmultirange
    datemultirange multirange
""")

_TEXT_SEARCH = _words("""
    to_tsvector to_tsquery plainto_tsquery phraseto_tsquery websearch_to_tsquery ts_rank ts_rank_cd
    ts_headline setweight strip tsvector_to_array array_to_tsvector numnode querytree
    get_current_ts_config ts_lexize ts_parse ts_token_type ts_delete ts_filter
""")

_NETWORK_GEO = _words("""
    abbrev broadcast family host hostmask inet_merge inet_same_family masklen netmask network
    set_masklen macaddr8_set7bit inet_client_addr inet_client_port inet_server_addr inet_server_port
    area center diameter height isclosed isopen npoints pclose popen radius slope width box circle
    line lseg path point polygon bound_box
""")

# xpath, xmltable and xmlexists evaluate XPath over a value they are given: no SQL runs (unlike
# query_to_xml and its family, denied below).
_XML = _words("""
    xmlcomment xmlconcat xmlelement xmlforest xmlpi xmlroot xmlexists xml_is_well_formed
    xml_is_well_formed_document xml_is_well_formed_content xpath xpath_exists xmlparse xmlserialize
    xmltable xmltext
""")

_UUID_CRYPTO = _words("""
    gen_random_uuid uuid_extract_timestamp uuid_extract_version uuidv4 uuidv7 uuid_generate_v1
    uuid_generate_v1mc uuid_generate_v4 digest hmac crypt gen_salt gen_random_bytes
    similarity word_similarity strict_word_similarity show_trgm levenshtein
    levenshtein_less_equal soundex difference metaphone dmetaphone dmetaphone_alt unaccent
""")

_SESSION_INFO = _words("""
    current_catalog current_database current_query current_role current_schema current_schemas
    current_user session_user user system_user pg_backend_pid pg_blocking_pids pg_conf_load_time
    pg_current_logfile pg_my_temp_schema pg_is_other_temp_schema pg_jit_available
    pg_listening_channels pg_notification_queue_usage pg_postmaster_start_time
    pg_safe_snapshot_blocking_pids pg_trigger_depth version pg_is_in_recovery
    pg_last_wal_receive_lsn pg_last_wal_replay_lsn pg_last_xact_replay_timestamp pg_current_wal_lsn
    pg_current_wal_insert_lsn pg_current_wal_flush_lsn pg_wal_lsn_diff pg_walfile_name
    pg_walfile_name_offset pg_get_wal_replay_pause_state pg_is_wal_replay_paused pg_current_snapshot
    pg_snapshot_xip pg_snapshot_xmax pg_snapshot_xmin pg_visible_in_snapshot pg_xact_status
    txid_current_if_assigned txid_current_snapshot txid_snapshot_xip txid_snapshot_xmax
    txid_snapshot_xmin txid_visible_in_snapshot txid_status pg_current_xact_id_if_assigned
    pg_xact_commit_timestamp pg_xact_commit_timestamp_origin
    pg_last_committed_xact mxid_age current_setting pg_settings_get_flags pg_sleep pg_sleep_for
    pg_sleep_until currval lastval pg_sequence_last_value pg_sequence_parameters
    pg_control_checkpoint pg_control_system pg_control_init pg_control_recovery
""")

_PRIVILEGES = _words("""
    has_any_column_privilege has_column_privilege has_database_privilege
    has_foreign_data_wrapper_privilege has_function_privilege has_language_privilege
    has_largeobject_privilege has_parameter_privilege has_schema_privilege has_sequence_privilege
    has_server_privilege has_table_privilege has_tablespace_privilege has_type_privilege pg_has_role
    row_security_active acldefault aclexplode makeaclitem
""")

_CATALOG = _words("""
    col_description obj_description shobj_description pg_get_catalog_foreign_keys
    pg_get_constraintdef pg_get_expr pg_get_functiondef pg_get_function_arguments
    pg_get_function_identity_arguments pg_get_function_result pg_get_indexdef pg_get_keywords
    pg_get_partkeydef pg_get_ruledef pg_get_serial_sequence pg_get_statisticsobjdef
    pg_get_triggerdef pg_get_userbyid pg_get_viewdef pg_index_column_has_property
    pg_index_has_property pg_indexam_has_property pg_options_to_table pg_tablespace_databases
    pg_tablespace_location pg_collation_is_visible pg_conversion_is_visible pg_function_is_visible
    pg_opclass_is_visible pg_operator_is_visible pg_opfamily_is_visible pg_statistics_obj_is_visible
    pg_table_is_visible pg_ts_config_is_visible pg_ts_dict_is_visible pg_ts_parser_is_visible
    pg_ts_template_is_visible pg_type_is_visible pg_describe_object pg_identify_object
    pg_identify_object_as_address pg_get_object_address pg_encoding_to_char pg_char_to_encoding
    pg_basetype pg_get_acl pg_column_compression pg_column_size pg_column_toast_chunk_id
    pg_database_size pg_indexes_size pg_relation_size pg_size_bytes pg_size_pretty pg_table_size
    pg_tablespace_size pg_total_relation_size pg_relation_filenode pg_relation_filepath
    pg_filenode_relation pg_partition_tree pg_partition_ancestors pg_partition_root pg_lock_status
    pg_available_extensions pg_available_extension_versions
    pg_show_all_settings pg_timezone_names pg_timezone_abbrevs pg_cursor pg_prepared_statement
    pg_prepared_xact pg_get_replication_slots pg_get_shmem_allocations pg_get_backend_memory_contexts
    pg_get_multixact_members pg_stat_statements pg_stat_statements_info pg_get_wal_resource_managers
    pg_get_publication_tables pg_stat_have_stats
    pg_stat_clear_snapshot pg_event_trigger_ddl_commands pg_event_trigger_dropped_objects
    pg_event_trigger_table_rewrite_oid pg_event_trigger_table_rewrite_reason
""")

# Table sampling methods appear as calls: TABLESAMPLE BERNOULLI (10).
_TABLESAMPLE = _words("bernoulli system system_rows system_time")

READ_FUNCTIONS: frozenset[str] = (
    _AGGREGATES
    | _WINDOW
    | _CONDITIONAL
    | _MATH
    | _STRING
    | _DATETIME
    | _TYPES
    | _JSON
    | _ARRAYS
    | _RANGES
    | _TEXT_SEARCH
    | _NETWORK_GEO
    | _XML
    | _UUID_CRYPTO
    | _SESSION_INFO
    | _PRIVILEGES
    | _CATALOG
    | _TABLESAMPLE
)

# pg_stat_get_* are the read-only accessors behind the pg_stat_* views (there are ~150 of them).
READ_FUNCTION_PREFIXES: tuple[str, ...] = ("pg_stat_get_",)

# --- Functions denied even in write scope ----------------------------------------------------------
# Write scope may change data, not the server, the session's identity or other sessions. These change
# settings (set_config can do what SET ROLE and SET client_encoding do), touch the server's files,
# reach other servers, signal other backends, run SQL given as text (which we cannot inspect), or
# control replication and backups. SQL given as text: every PostgreSQL 15 built-in that hands a text
# argument to SPI (query_to_xml*, cursor_to_xml*, table_/schema_/database_to_xml* which build and run
# queries, ts_stat, ts_rewrite(tsquery, text)), and contrib's dblink*, crosstab*, connectby. Matched
# on the unqualified name in any schema: extensions such as dblink live in whatever schema they were
# installed into. policy.extra_functions overrides.

WRITE_DENIED_FUNCTIONS: frozenset[str] = _words("""
    set_config pg_terminate_backend pg_cancel_backend pg_reload_conf pg_rotate_logfile
    pg_rotate_logfile_old pg_switch_wal pg_switch_xlog pg_create_restore_point pg_start_backup
    pg_stop_backup pg_backup_start pg_backup_stop pg_promote pg_wal_replay_pause pg_wal_replay_resume
    pg_xlog_replay_pause pg_xlog_replay_resume pg_log_backend_memory_contexts pg_log_standby_snapshot
    pg_create_physical_replication_slot pg_create_logical_replication_slot pg_drop_replication_slot
    pg_copy_physical_replication_slot pg_copy_logical_replication_slot pg_replication_slot_advance
    pg_logical_emit_message pg_sync_replication_slots pg_import_system_collations
    pg_read_file pg_read_binary_file pg_ls_dir pg_stat_file pg_logdir_ls pg_truncate_visibility_map
    lo_import lo_export query_to_xml query_to_xml_and_xmlschema query_to_xmlschema cursor_to_xml
    cursor_to_xmlschema connectby table_to_xml
    table_to_xml_and_xmlschema table_to_xmlschema schema_to_xml schema_to_xml_and_xmlschema
    schema_to_xmlschema database_to_xml database_to_xml_and_xmlschema database_to_xmlschema
    ts_stat ts_rewrite pg_hba_file_rules pg_ident_file_mappings
    pg_show_all_file_settings pg_shmem_allocations_numa
""")

WRITE_DENIED_PREFIXES: tuple[str, ...] = (
    "dblink",  # dblink, dblink_exec, dblink_connect...: SQL on another (or this) server as another role
    "crosstab",  # tablefunc's crosstab(text), crosstab2..4, crosstab_hash: run the SQL text they are given
    "pg_ls_",  # pg_ls_logdir, pg_ls_waldir, ...: server directory listings
    "pg_file_",  # adminpack: pg_file_write, pg_file_unlink, ...
    "pg_stat_reset",  # wipes the statistics an investigation relies on
    "pg_stat_statements_reset",
    "pg_replication_origin_",
    "pg_logical_slot_",  # consumes a logical replication slot's changes
    "binary_upgrade_",
)

# --- Settings --------------------------------------------------------------------------------------
# SET/RESET of these is harmless in read scope: presentation, planner knobs and timeouts. Anything
# else needs write scope, except ADMIN_SETTINGS and custom (dotted) settings, which need admin:
# a custom setting such as app.tenant_id is often what row-level security policies trust.

READ_SETTINGS: frozenset[str] = _words("""
    application_name search_path statement_timeout lock_timeout idle_in_transaction_session_timeout
    idle_session_timeout transaction_timeout datestyle timezone intervalstyle extra_float_digits
    bytea_output xmloption xmlbinary lc_monetary lc_numeric lc_time client_min_messages
    work_mem hash_mem_multiplier temp_buffers maintenance_work_mem jit jit_above_cost
    jit_inline_above_cost jit_optimize_above_cost geqo geqo_threshold geqo_effort from_collapse_limit
    join_collapse_limit default_statistics_target plan_cache_mode max_parallel_workers_per_gather
    parallel_setup_cost parallel_tuple_cost parallel_leader_participation min_parallel_table_scan_size
    min_parallel_index_scan_size debug_parallel_query force_parallel_mode cursor_tuple_fraction
    constraint_exclusion random_page_cost seq_page_cost cpu_tuple_cost cpu_index_tuple_cost
    cpu_operator_cost effective_cache_size effective_io_concurrency default_transaction_isolation
    transaction_isolation default_transaction_deferrable transaction_deferrable
    gin_fuzzy_search_limit escape_string_warning quote_all_identifiers synchronize_seqscans
    default_text_search_config timezone_abbreviations array_nulls row_security
    enable_async_append enable_bitmapscan enable_gathermerge enable_group_by_reordering
    enable_hashagg enable_hashjoin enable_incremental_sort enable_indexscan enable_indexonlyscan
    enable_material enable_memoize enable_mergejoin enable_nestloop enable_parallel_append
    enable_parallel_hash enable_partition_pruning enable_partitionwise_join
    enable_partitionwise_aggregate enable_presorted_aggregate enable_seqscan enable_sort
    enable_tidscan enable_self_join_elimination enable_distinct_reordering
""")

# Superuser-level knobs, identity changes, and switches that hide or disable the audit trail.
ADMIN_SETTINGS: frozenset[str] = _words("""
    role session_authorization session_replication_role allow_system_table_mods
    allow_in_place_tablespaces zero_damaged_pages ignore_system_indexes ignore_checksum_failure
    ignore_invalid_pages lo_compat_privileges session_preload_libraries local_preload_libraries
    track_activities track_counts track_functions track_io_timing track_wal_io_timing
    wal_compression wal_consistency_checking temp_file_limit commit_delay
""")

ADMIN_SETTING_PREFIXES: tuple[str, ...] = ("log_", "debug_", "trace_")

# --- Words that are followed by "(" without being a call -------------------------------------------
# Used to cross-check sqlglot: a "name (" that sqlglot explained neither as a call nor as a name
# (alias, column list) is treated as a call, unless it is one of these (unqualified) keywords.

SYNTAX_WORDS: frozenset[str] = _words("""
    in exists values over filter as any all some lateral using on from join where and or not select
    by then else when case is distinct with within group rows range groups union intersect except
    limit offset fetch returning into only like ilike similar between cube rollup sets partition
    order having window tablesample repeatable escape collate at zone default check unique primary
    references key foreign table ordinality columns passing nested recursive materialized
    conflict do set update delete insert merge matched for of nowait skip locked share precision
    varying without first next ties symmetric asymmetric to placing leading trailing both
""")

TYPE_NAMES: frozenset[str] = _words("""
    varchar char character nchar numeric decimal dec timestamp timestamptz time timetz interval bit
    varbit float double int integer smallint bigint real text bpchar
""")
