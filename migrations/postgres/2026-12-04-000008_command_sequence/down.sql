DROP SEQUENCE order_command_seq;
