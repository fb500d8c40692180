DROP TABLE battery_plans;
